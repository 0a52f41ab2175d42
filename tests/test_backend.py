"""torch.distributed on backend="fastallreduce": collectives vs gloo, DDP parity, torchrun launch.

The ranks (a RankPool of 4 whose default group is on this backend) are shared by the tests of
this module; groups of 1..4 ranks on this backend are compared with gloo groups over the same
ranks, so world sizes 1-4 cost one process start-up. World sizes 5-8 share a second pool of 8.
"""
import os
import subprocess
import sys

import pytest

import backend_cases as bc
from fastallreduce.launch import RankPool, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fpool():
    p = RankPool(4, backend="fastallreduce", pg_timeout_s=60)
    yield p
    p.close()


@pytest.fixture(scope="module")
def fpool8():
    p = RankPool(8, backend="fastallreduce", pg_timeout_s=60)
    yield p
    p.close()


def _check_allreduce_summaries(res: list, k: int) -> None:
    for r in res[:k]:
        assert r["checked"] > 0
        assert r["engine_ops"] == r["engine_expected"], r  # the eligible calls ran on the engine
    assert all(r is None for r in res[k:]), res[k:]  # ranks outside the group took no part


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_allreduce_matches_gloo(fpool, k):
    _check_allreduce_summaries(fpool.run(bc.allreduce_vs_gloo, k, False, timeout=180), k)


# 8 ranks oversubscribe 2 cores, so three sizes per dtype and op: empty, fewer elements than
# ranks, and 9001 (no multiple of 5..8: uneven chunks; above the shared-memory one-shot threshold
# for 4- and 8-byte dtypes, so the reduce-scatter/allgather path runs too).
@pytest.mark.parametrize("k", [5, 6, 7, 8])
def test_allreduce_matches_gloo_5_to_8_ranks(fpool8, k):
    _check_allreduce_summaries(fpool8.run(bc.allreduce_vs_gloo, k, False, (0, 1, 9001), timeout=180), k)


@pytest.mark.parametrize("k", [2, 3])
def test_allreduce_async_matches_gloo(fpool, k):
    res = fpool.run(bc.allreduce_vs_gloo, k, True, (5, 3001), timeout=180)
    assert all(r["engine_ops"] == r["engine_expected"] for r in res[:k]), res


# Hangs intermittently (rank 0 never returns from a collective the other ranks have passed; seen
# with the barrier case after the allreduce tests above); cause not found yet, see issue 9's note.
# Run it with FASTALLREDUCE_RUN_FLAKY=1.
@pytest.mark.skipif(not os.environ.get("FASTALLREDUCE_RUN_FLAKY"),
                    reason="intermittent hang under investigation (issue 9); FASTALLREDUCE_RUN_FLAKY=1 runs it")
@pytest.mark.parametrize("k", [1, 2, 4])
def test_other_collectives_match_gloo(fpool, k):
    res = fpool.run(bc.others_vs_gloo, k, timeout=180)
    for r in res[:k]:
        assert r["diffs"] == [], r["diffs"]
        assert len(r["names"]) >= 18


def test_ddp_parity_with_gloo(fpool):
    res = fpool.run(bc.ddp_parity, 12, timeout=180)
    for r in res[:2]:
        assert r["engine_ops"] >= 12, r  # DDP's bucket allreduces ran on the engine
        assert r["identical"], r  # 2 ranks: a + b in both, so bit-identical
    assert res[0]["checksum"] == res[1]["checksum"]


def test_timeout_raises_dist_backend_error(fpool):
    res = fpool.run(bc.timeout_case_rank0, 2.0, timeout=120)
    r = res[0]
    assert r["is_dist_error"], r
    assert "CommTimeoutError" in r["msg"] and "[1]" in r["msg"], r  # names the missing rank
    assert r["seconds"] < 30, r


def test_torchrun_launch(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           os.path.join(HERE, "backend_torchrun_job.py"), str(tmp_path / "store")]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for r in range(2):
        assert f"OK rank {r} env:// engine_ops=" in p.stdout, p.stdout
        assert f"OK rank {r} store per-device" in p.stdout, p.stdout
