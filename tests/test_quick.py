import pytest
import dist_cases as dc


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("algo", ["ring", "halving_doubling", "shm", "auto"])
def test_smoke(pool, world, algo):
    for n in [0, 1, 1000, 3_000_000]:
        res = pool(world).run(dc.check_allreduce, algo, n, "float32", "sum")
        assert all(r[0] == 0 for r in res), res
        assert len({r[1] for r in res}) == 1


@pytest.mark.parametrize("hosts", [["a", "a", "b", "b"], ["a", "b", "a", "b"], ["a", "a", "a", "b"]])
def test_hier(pool, hosts):
    for n in [0, 1, 1000, 3_000_000]:
        res = pool(4).run(dc.check_allreduce, "auto", n, "float32", "avg", hosts=hosts)
        assert all(r[0] < 1e-6 for r in res), res
        assert len({r[1] for r in res}) == 1
        print(res[0][2])
