"""Per-rank functions for test_front_door.py (run on RankPool ranks, default group on gloo)."""
import gc
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import fastallreduce as far
from fault_cases import outcome


def noncontiguous_on_one_rank():
    """Rank 0 passes a strided view, the others a contiguous tensor of the same numel: both are
    the same logical call, so every rank gets the sum (a path chosen from contiguity would split
    the ranks between two paths)."""
    c = far.Communicator(timeout=timedelta(seconds=15))
    r, k = dist.get_rank(), dist.get_world_size()
    base = torch.full((6, 4), float(r + 1))
    t = base.t() if r == 0 else torch.full((4, 6), float(r + 1))  # rank 0: not contiguous
    got = outcome(lambda: c.allreduce(t))
    out = torch.empty(7)
    got_out = outcome(lambda: c.allreduce(torch.arange(14.0)[::2] if r == 0 else torch.arange(0.0, 14.0, 2.0), out=out))
    c.close()
    expect = float(sum(range(1, k + 1)))
    return got[0], bool((t == expect).all()), got_out[0], out.tolist(), bool((base.t() == expect).all()) if r == 0 else True


def backend_noncontiguous_on_one_rank():
    g = dist.new_group(backend="fastallreduce", timeout=timedelta(seconds=15))
    r, k = dist.get_rank(), dist.get_world_size()
    t = torch.full((6, 4), float(r + 1)).t() if r == 0 else torch.full((4, 6), float(r + 1))
    t0 = time.monotonic()
    got = outcome(lambda: dist.all_reduce(t, group=g))
    return got[0], float(t.sum()), time.monotonic() - t0, 24.0 * sum(range(1, k + 1))


def rejection_reaches_peers():
    """Rank 0 rejects a call (avg on integers) that rank 1 makes correctly: rank 0 raises
    TypeError at once, rank 1 MismatchError naming rank 0 well before the timeout; both
    communicators are aborted afterwards."""
    c = far.Communicator(timeout=timedelta(seconds=30))
    r = dist.get_rank()
    if r == 0:
        first = outcome(lambda: c.allreduce(torch.ones(4, dtype=torch.int32), op="avg"))
    else:
        first = outcome(lambda: c.allreduce(torch.ones(4, dtype=torch.int32), op="sum"))
    dist.barrier()
    second = outcome(lambda: c.allreduce(torch.ones(4)))
    c.close()
    return first, second


def python_rejection_reaches_peers():
    """A call refused by the Python adapter (an unknown op name) is published the same way."""
    c = far.Communicator(timeout=timedelta(seconds=30))
    op = "mean" if dist.get_rank() == 0 else "sum"
    first = outcome(lambda: c.allreduce(torch.ones(4), op=op))
    c.close()
    return first


def backend_delegated_vs_engine():
    """Same numel, rank 0 int16 (Gloo's) and the others float32 (the engine's): MismatchError on
    every rank, promptly, instead of each side waiting for the other until the timeout."""
    g = dist.new_group(backend="fastallreduce", timeout=timedelta(seconds=30))
    dtype = torch.int16 if dist.get_rank() == 0 else torch.float32
    return outcome(lambda: dist.all_reduce(torch.ones(8, dtype=dtype), group=g))


def cross_host_family_mismatch(kind):
    """One rank per simulated host (the allreduce-based fallback): a broadcast against an
    all_gather of the same bytes, or broadcasts from different sources, are MismatchError."""
    r, k = dist.get_rank(), dist.get_world_size()
    c = far.Communicator(host_id=f"host{r}", timeout=timedelta(seconds=30))
    x = torch.full((4,), float(r + 1))
    if kind == "broadcast_vs_gather":
        # rank 0 broadcasts 4 * k floats from itself; the others all_gather 4 floats each (same bytes)
        if r == 0:
            res = outcome(lambda: c.broadcast(torch.zeros(4 * k), src=0))
        else:
            res = outcome(lambda: c.all_gather(torch.zeros(4 * k), x))
    else:
        res = outcome(lambda: c.broadcast(x, src=r % 2))
    c.close()
    return res, c._c.single_host


def sync_call_from_callback():
    """A synchronous collective issued from a Future callback (on the engine's worker thread)
    completes, and so does an async one queued before it."""
    c = far.Communicator(timeout=timedelta(seconds=20))
    x, y, w = torch.ones(4), torch.full((4,), 2.0), torch.full((4,), 3.0)
    fut = c.allreduce(x, async_op=True)
    queued = c.allreduce(w, async_op=True)  # #1, queued behind #0 before its callback runs
    inner = fut.then(lambda f: float(c.allreduce(y)[0]))  # #2, from the callback
    got = inner.wait()
    last = float(queued.wait()[0])
    c.close()
    return float(x[0]), got, last


def slow_callback_not_counted():
    """A callback slower than the timeout is not the collective's time: the next call works (on
    the point-to-point path, where a deadline fired late would also have cut the transport)."""
    c = far.Communicator(algorithm="ring", timeout=timedelta(seconds=2))
    fut = c.allreduce(torch.ones(4), async_op=True).then(lambda f: time.sleep(3.0))
    fut.wait()
    res = outcome(lambda: c.allreduce(torch.ones(4)))
    c.close()
    return res


def close_and_drop_in_callback():
    """close() and the last reference dropped inside a callback on the worker thread: no crash,
    no hang; a new communicator works afterwards."""
    holder = {"c": far.Communicator(timeout=timedelta(seconds=20))}
    done = []

    def cb(f):
        c = holder.pop("c")
        c.close()
        del c
        gc.collect()
        done.append(True)
        return None

    fut = holder["c"].allreduce(torch.ones(4), async_op=True).then(cb)
    fut.wait()
    time.sleep(0.2)
    c2 = far.Communicator(timeout=timedelta(seconds=20))
    v = float(c2.allreduce(torch.ones(4))[0])
    c2.close()
    return done, v


def destroyed_with_pending_work():
    """Rank 1 drops its communicator with collectives queued: rank 0, waiting in the next one,
    raises promptly (the destructor publishes the abort) instead of waiting out the timeout."""
    c = far.Communicator(timeout=timedelta(seconds=40))
    r = dist.get_rank()
    if r == 1:
        futs = [c.allreduce(torch.ones(1 << 16), async_op=True) for _ in range(50)]
        del futs
        del c
        gc.collect()
        dist.barrier()
        return ("dropped", None, 0.0)
    t0 = time.monotonic()
    res = None
    try:
        for _ in range(51):
            c.allreduce(torch.ones(1 << 16))
        res = ("ok", None)
    except Exception as e:  # noqa: BLE001
        res = (type(e).__name__, str(e))
    dt = time.monotonic() - t0
    dist.barrier()
    c.close()
    return (*res, dt)


def bad_config(var, value, on_rank):
    """`var`=`value` on one rank only: every rank's constructor raises ValueError naming it."""
    old = os.environ.get(var)
    if dist.get_rank() == on_rank:
        os.environ[var] = value
    t0 = time.monotonic()
    try:
        res = outcome(lambda: far.Communicator(timeout=timedelta(seconds=30)))
    finally:
        if old is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = old
    return res[0], res[1], time.monotonic() - t0


def huge_timeout():
    res = outcome(lambda: far.Communicator(timeout=timedelta(days=10**6)))
    c = far.Communicator(timeout=timedelta(days=300))
    ok = float(c.allreduce(torch.ones(2))[0])
    c.close()
    return res, ok


def killed_while_creating_segment():
    """Rank 1 dies right after creating its shared-memory segment (a failpoint): its segment
    stays in /dev/shm until the next communicator made on this host removes it."""
    if dist.get_rank() == 1:
        os.environ["FASTALLREDUCE_FAILPOINT"] = "shm_created"
    far.Communicator(timeout=timedelta(seconds=5))
    return "survived"


def avg16_no_overflow(algorithm, hosts=None):
    """float16 / bfloat16 avg of 40000 on every rank: 2 x 40000 overflows float16 (max 65504)
    if summed first, the average itself fits; every path must give the finite average."""
    r = dist.get_rank()
    c = far.Communicator(algorithm=algorithm, host_id=hosts[r] if hosts else None, timeout=timedelta(seconds=30))
    out = []
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.full((1000,), 40000.0, dtype=dtype)
        c.allreduce(x, op="avg")
        out.append((str(dtype), bool(torch.isfinite(x).all()), float(x.double().sub(40000.0).abs().max()),
                    c.last_algorithm))
    c.close()
    return out


def self_overlapping_output(kind):
    """Rank 0's written tensor has elements that share memory (expand()), the other ranks' not:
    rank 0 raises ValueError before anything moves and every other rank a MismatchError naming
    it, promptly (the timeout is 30 s); nobody returns a result."""
    c = far.Communicator(timeout=timedelta(seconds=30))
    bad, k = dist.get_rank() == 0, dist.get_world_size()

    def written(n):
        return torch.zeros(1).expand(n) if bad else torch.zeros(n)

    def call():
        if kind == "allreduce_out":
            c.allreduce(torch.ones(4), out=written(4))
        elif kind == "allreduce_in_place":
            c.allreduce(written(4))
        else:
            c.all_gather(written(4 * k), torch.ones(4))

    res = outcome(call)
    c.close()
    return res
