"""Faults are errors on every rank, never hangs, never wrong data, never leaked segments."""
import os
import re
import subprocess
import sys
import textwrap

import pytest

import fault_cases as fc
from fastallreduce.launch import RankPool
from shm_segments import segments_of




def test_bad_inputs(pool):
    res = pool(2).run(fc.bad_inputs)
    expect = {"meta": "NotImplementedError", "complex": "TypeError",
              "band": "ValueError", "badop": "ValueError", "avg_int": "TypeError", "bool_sum": "TypeError",
              "out_shape": "ValueError", "out_dtype": "TypeError", "out_overlap": "ValueError",
              "not_tensor": "TypeError", "sparse": "TypeError", "algo": "ValueError",
              "ctor_algo": "ValueError", "ctor_timeout": "TypeError"}
    for r in res:
        for k, v in expect.items():
            assert r[k][0] == v, (k, r[k])
            assert r[k][1], k  # a message naming the problem
        assert r["noncontig"][0] == "ok", r["noncontig"]  # staged through a contiguous copy
        assert r["after"] == 3.0


@pytest.mark.parametrize("kind", ["size", "dtype", "op", "count_zero"])
@pytest.mark.parametrize("algorithm", ["ring", "halving_doubling", "shm"])
def test_mismatch_errors_on_every_rank(pool, kind, algorithm):
    res = pool(3).run(fc.mismatch, kind, algorithm, timeout=120)
    for first, second in res:
        assert first[0] in ("MismatchError", "CommError"), first
        assert "mismatch" in first[1], first
        assert first[2] < 20, first
        assert second[0] == "ClosedError", second


@pytest.mark.parametrize("kind", ["size_local", "size_host", "dtype_host", "op_local", "count_zero_host",
                                  "count_zero_local", "algorithm"])
def test_mismatch_hierarchical_errors_on_every_rank(pool, kind):
    """Two simulated hosts of two ranks: every rank raises a mismatch promptly (the timeout is
    30 s), and the communicator is closed afterwards."""
    res = pool(4).run(fc.mismatch_hierarchical, kind, ["a", "a", "b", "b"], timeout=120)
    for first, second in res:
        assert first[0] in ("MismatchError", "CommError"), first
        assert "mismatch" in first[1], first
        assert first[2] < 20, first
        assert second[0] == "ClosedError", second


@pytest.mark.parametrize("algorithm", ["ring", "shm"])
def test_rank_that_stops_calling_times_out(pool, algorithm):
    res = pool(3).run(fc.stop_calling, algorithm, 3, timeout=120)
    for r in (0, 2):
        kind, msg, took = res[r]
        assert kind in ("CommTimeoutError",), res[r]
        assert "1" in msg.split("at the deadline")[-1] or "did not reach" in msg, msg
        assert took < 3 + 10, took


@pytest.mark.parametrize("algorithm", ["ring", "shm", "hierarchical"])
def test_kill_9_in_the_middle(algorithm):
    p = RankPool(3)
    try:
        for c in p.conns:
            c.send((fc.killed, (algorithm, 30, 2), {}))
        res = p.collect(timeout=90, raise_errors=False, ranks=[0, 1])
    finally:
        p.kill()
    for r in (0, 1):
        kind, msg, took = res[r]
        assert kind in ("CommError", "CommTimeoutError"), res[r]
        assert took < 30, res[r]
    assert segments_of(p.pids) == []


def test_default_timeout_is_the_groups(pool):
    """Communicator() without timeout= is bounded by its group's timeout, not torch's 30 min default."""
    assert pool(2).run(fc.default_timeouts) == [[120.0, 7.0]] * 2


@pytest.mark.timeout(150)
@pytest.mark.parametrize("hosts,victim", [(["a", "b"], 1), (["a", "a", "b", "b"], 3)], ids=["two_hosts", "2x2"])
def test_peer_exit_raises_ours_and_aborts(hosts, victim):
    """A peer's process exits between collectives (its connections close): every other rank's
    next allreduce raises one of our errors naming the peer, never the transport's own, well
    before the timeout; the communicator is aborted on every rank, and nothing is left in /dev/shm."""
    world, timeout_s = len(hosts), 30
    survivors = [r for r in range(world) if r != victim]
    p = RankPool(world)
    try:
        for c in p.conns:
            c.send((fc.peer_exits, (hosts, victim, timeout_s), {}))
        res = p.collect(timeout=120, raise_errors=False, ranks=survivors)
    finally:
        p.kill()
    for r in survivors:
        (kind, msg, took), aborted, second = res[r]
        assert kind in ("CommError", "CommTimeoutError", "MismatchError"), res[r]
        assert f"rank {victim}" in msg or re.search(rf"\[ranks [^\]]*\b{victim}\b", msg), (r, msg)
        assert took < timeout_s, res[r]
        assert aborted, res[r]
        assert second[0] == "ClosedError", res[r]
    assert segments_of(p.pids) == []


@pytest.mark.parametrize("world,hosts", [(2, None), (4, ["a", "a", "b", "b"])])
def test_nan_and_inf(pool, world, hosts):
    """NaN wins in max/min (as torch.maximum); on two simulated hosts the cross-host stage is a
    pair swap, where both ranks must reduce in the same order: a NaN payload of each rank's own
    must come out the same on every rank."""
    res = pool(world).run(fc.nan_inf, hosts)
    nan = float("nan")
    for algo, (mx, mn, sm, bits) in res[0].items():
        assert str(mx) == str([nan, 2.0, float("inf"), 0.0]), (algo, mx)
        assert str(mn) == str([nan, 2.0, float("inf"), -float("inf")]), (algo, mn)
        assert str(sm) == str([nan, world * 2.0, float("inf"), -float("inf")]), (algo, sm)
        assert all(b & 0x7FC00000 == 0x7FC00000 for b in bits), (algo, bits)  # NaN
        assert all(res[r][algo][3] == bits for r in range(world)), [res[r][algo][3] for r in range(world)]


def test_close_drains_queued_ops(pool):
    res = pool(2).run(fc.close_with_queued_ops)
    for vals, closed in res:
        assert vals == [2.0] * 20
        assert closed[0] == "ClosedError"


def test_drop_communicator_with_op_in_flight(pool):
    # Before the fix this never returned (deadlock between the GIL and the worker's join).
    res = pool(2).run(fc.drop_with_op_in_flight, timeout=60)
    assert res[0] < 10, res


def test_forked_child_gets_a_clear_error(pool):
    assert pool(2).run(fc.fork_child) == [7, 7]


def test_two_communicators_on_two_groups(pool):
    assert pool(3).run(fc.two_communicators) == [True] * 3


SHUTDOWN = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    import fastallreduce as far
    order = sys.argv[1]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    c = far.Communicator()
    futs = [c.allreduce(torch.ones(100000), async_op=True) for _ in range(5)]
    if order == "close_then_destroy":
        c.close(); dist.destroy_process_group()
    elif order == "destroy_then_close":
        for f in futs: f.wait()
        dist.destroy_process_group(); c.close()
    # "exit": leave everything to the interpreter's exit (atexit drains and closes)
    print("done", rank, flush=True)
""")


@pytest.mark.parametrize("order", ["close_then_destroy", "destroy_then_close", "exit"])
def test_shutdown_orders_never_hang(tmp_path, order):
    script = tmp_path / "shutdown.py"
    script.write_text(SHUTDOWN)
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(RankPool.__module__ and __import__("fastallreduce.launch").launch.free_port()),
               WORLD_SIZE="2", PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, str(script), order], env=dict(env, RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"shutdown order {order} hung")
        outs.append((p.returncode, out, err))
    for rc, out, err in outs:
        assert rc == 0, err[-2000:]
        assert "done" in out
    assert segments_of(p.pid for p in procs) == []


def test_subgroup_then_world_communicators(pool):
    assert pool(3).run(fc.subgroup_then_world, timeout=120) == [3.0, 3.0, 3.0]
