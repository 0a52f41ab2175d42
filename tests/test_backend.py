"""torch.distributed on backend="fastallreduce": collectives vs gloo, DDP parity, torchrun launch.

The ranks (a RankPool of 4 whose default group is on this backend) are shared by the tests of
this module; groups of 1..4 ranks on this backend are compared with gloo groups over the same
ranks, so world sizes 1-4 cost one process start-up. World sizes 5-8 share a second pool of 8.
"""
import json
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


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_gather_family_on_engine(fpool, k):
    # broadcast, all_gather(_into_tensor), reduce_scatter(_tensor) run on shared memory
    _check_allreduce_summaries(fpool.run(bc.gather_family_vs_expected, k, False, timeout=240), k)


@pytest.mark.parametrize("k", [2, 3])
def test_gather_family_async(fpool, k):
    _check_allreduce_summaries(fpool.run(bc.gather_family_vs_expected, k, True, (5, 3001), timeout=240), k)


@pytest.mark.parametrize("k", [5, 8])
def test_gather_family_5_to_8_ranks(fpool8, k):
    _check_allreduce_summaries(fpool8.run(bc.gather_family_vs_expected, k, False, (0, 1, 9001), timeout=240), k)


def test_gather_family_chunked_across_slots():
    # 64 KiB slots and 8 KiB chunks: messages of many chunks, both slots reused, and a
    # reduce_scatter chunk holding one piece per rank.
    env = {"FASTALLREDUCE_SHM_SLOT_BYTES": "65536", "FASTALLREDUCE_SHM_CHUNK_BYTES": "8192"}
    with RankPool(3, backend="fastallreduce", pg_timeout_s=60, env=env) as pool:
        _check_allreduce_summaries(pool.run(bc.gather_family_vs_expected, 3, False, (1, 9001, 40000), timeout=240), 3)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_other_collectives_match_gloo(fpool, k):
    res = fpool.run(bc.others_vs_gloo, k, timeout=180)
    for r in res[:k]:
        assert r["diffs"] == [], r["diffs"]
        assert len(r["names"]) >= 18


@pytest.mark.parametrize("k", [2, 4])
def test_barrier_after_failed_op(fpool, k):
    # Gloo's barrier fails this (one rank re-raises the PREMUL_SUM error, the others time out).
    res = fpool.run(bc.barrier_after_failure, k, 40, timeout=180)
    for r in res[:k]:
        assert r == {"failures": 40, "barriers_ok": 40}, res


def test_barrier_waits_for_queued_allreduces(fpool):
    res = fpool.run(bc.barrier_orders_after_async_allreduce, 4, timeout=120)
    for r in res:
        assert r["ok"] and all(r["done_at_barrier"]), res


@pytest.mark.parametrize("k", [1, 3])
def test_sync_work_contract(fpool, k):
    res = fpool.run(bc.sync_work_contract, k, timeout=120)
    total = sum(float(i) * k + k * (k - 1) / 2 for i in range(1001))
    for r in res[:k]:
        assert r == {"completed": True, "success": True, "exception": None, "wait": True, "result_is_x": True,
                     "future_holds_x": True, "future_done": True, "then": total, "value_ok": True,
                     "barrier_completed": True}, r


@pytest.mark.parametrize("rank0_call", ["barrier", "all_gather"])
def test_mismatched_with_allreduce_raises_everywhere(fpool, rank0_call):
    # One rank's barrier (or allgather) against the other's all_reduce: MismatchError on both.
    res = fpool.run(bc.mismatch_with_allreduce, rank0_call, timeout=120)
    for r in res[:2]:
        assert r["raised"] == "DistBackendError" and "MismatchError" in r["msg"], res
        assert r["seconds"] < 20, res
    if rank0_call == "all_gather":
        assert all("allgather" in r["msg"] and "allreduce" in r["msg"] for r in res[:2]), res


def test_ddp_parity_with_gloo(fpool):
    res = fpool.run(bc.ddp_parity, 12, timeout=180)
    for r in res[:2]:
        assert r["engine_ops"] >= 12, r  # DDP's bucket allreduces ran on the engine
        assert r["identical"], r  # 2 ranks: a + b in both, so bit-identical
    assert res[0]["checksum"] == res[1]["checksum"]


@pytest.mark.parametrize("call", ["all_reduce", "broadcast", "reduce_scatter_tensor"])
def test_timeout_raises_dist_backend_error(fpool, call):
    res = fpool.run(bc.timeout_case_rank0, 2.0, call, timeout=120)
    r = res[0]
    assert r["is_dist_error"], r
    assert "CommTimeoutError" in r["msg"] and "[1]" in r["msg"], r  # names the missing rank
    assert r["seconds"] < 30, r


def _torchrun(args: list, timeout: float) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node 2 ARGS`` on loopback; must exit 0."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def test_torchrun_launch(tmp_path):
    p = _torchrun([os.path.join(HERE, "backend_torchrun_job.py"), str(tmp_path / "store")], timeout=180)
    for r in range(2):
        assert f"OK rank {r} env:// engine_ops=" in p.stdout, p.stdout
        assert f"OK rank {r} store per-device" in p.stdout, p.stdout


def test_torchrun_main_job_on_backend(tmp_path):
    # The README's main job, launched by torchrun on this backend: it runs on the two launched ranks
    # (no ranks of its own), with the backend's dist.all_reduce as one of the measured implementations.
    p = _torchrun(["-m", "fastallreduce", "bench", "allreduce", "--dist-backend", "fastallreduce",
                   "-b", "8", "-e", "4K", "-f", "8", "-w", "1", "-i", "2", "-a", "auto,backend",
                   "--no-progress", "--no-plot", "--out", str(tmp_path)], timeout=180)
    out = p.stdout
    assert out.count("# fastallreduce allreduce_bw") == 1, out  # rank 0 alone prints
    assert "launched by torchrun, default process group on backend 'fastallreduce'" in out, out
    assert "dist.all_reduce on the fastallreduce backend" in out and "2 ranks: out of bounds values" in out, out
    assert "#wrong, all rows): 0 OK" in out, out
    doc = json.loads((tmp_path / "allreduce_bw.json").read_text())
    (run,) = doc["runs"]
    assert run["nranks"] == 2 and doc["config"]["launcher"] == "torchrun", doc["config"]
    assert set(run["results"]) == {"gloo", "auto", "backend"}, run
    for name, rows in run["results"].items():
        assert [r["size"] for r in rows] == [8, 64, 512, 4096], (name, rows)
        for r in rows:
            assert r["oop"]["wrong"] == 0 and r["ip"]["wrong"] == 0, (name, r)
            assert len(r["ip"]["iter_times_us"]) == 2, (name, r)
    assert all(r["ip"]["time_vs_communicator"] > 0 for r in run["results"]["backend"])


def test_backend_algorithm_variable():
    # One rank's invalid FASTALLREDUCE_BACKEND_ALGORITHM fails every rank's group, naming it; a
    # valid value that differs between ranks is agreed (rank 0's applies, as for every engine knob)
    # instead of failing the first collective with a MismatchError.
    with RankPool(2, backend="gloo", pg_timeout_s=60) as p:
        bad = p.run(bc.backend_algorithm, "tree", timeout=120)
        good = p.run(bc.backend_algorithm, "ring", timeout=120)
    for name, msg, _ in bad:
        assert name == "ValueError" and "FASTALLREDUCE_BACKEND_ALGORITHM='tree'" in msg, (name, msg)
    assert [r[0] for r in good] == ["ok", "ok"] and good[0][2] == [2.0] * 3, good
