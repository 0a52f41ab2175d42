"""FSDP2 on the "fastallreduce" backend: the in-place all_gather_into_tensor and
reduce_scatter_tensor it issues give gloo's results, other overlaps still raise on every rank,
and a fully_shard training step gives gloo's parameters."""
import pytest

import fsdp_cases as fc
from fastallreduce.launch import RankPool

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fpool():
    p = RankPool(2, backend="fastallreduce", pg_timeout_s=30)
    yield p
    p.close()


@pytest.mark.parametrize("async_op", [False, True])
def test_in_place_gather_family_matches_gloo(fpool, async_op):
    for diffs in fpool.run(fc.in_place_family, async_op, timeout=180):
        assert diffs == [], diffs


def test_other_overlap_raises_on_every_rank(fpool):
    res = fpool.run(fc.other_overlap, 0, timeout=120)
    assert res[0][0] == "ValueError" and "overlap" in res[0][1], res
    assert res[1][0] == "DistBackendError" and "MismatchError" in res[1][1] and "rank 0" in res[1][1], res
    assert all(r[2] < 10 for r in res), res  # the group's timeout is 30 s


def test_fully_shard_step_matches_gloo(fpool):
    for r in fpool.run(fc.fully_shard_step, 3, timeout=240):
        assert r["moved"] and r["identical"], r
