import pytest
import dist_cases as dc


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("algo", ["ring", "halving_doubling"])
def test_smoke(pool, world, algo):
    res = pool(world).run(dc.check_allreduce, algo, 1000, "float32", "sum")
    assert all(r[0] == 0 for r in res), res
    assert len({r[1] for r in res}) == 1
