"""Fault scenarios run on the ranks of a RankPool."""
import os
import signal
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import fastallreduce as far


def outcome(fn):
    t0 = time.monotonic()
    try:
        fn()
        return ("ok", None, time.monotonic() - t0)
    except Exception as e:  # noqa: BLE001
        return (type(e).__name__, str(e), time.monotonic() - t0)


def bad_inputs():
    """Each bad call raises the right exception class before anything is sent."""
    c = far.Communicator(algorithm="ring")
    x = torch.ones(8)
    base = torch.ones(16)
    res = {
        "noncontig": outcome(lambda: c.allreduce(torch.ones(4, 4).t())),
        "meta": outcome(lambda: c.allreduce(torch.ones(4, device="meta"))),
        "complex": outcome(lambda: c.allreduce(torch.ones(4, dtype=torch.complex64))),
        "band": outcome(lambda: c.allreduce(x, op=dist.ReduceOp.BAND)),
        "badop": outcome(lambda: c.allreduce(x, op="mean")),
        "avg_int": outcome(lambda: c.allreduce(torch.ones(4, dtype=torch.int32), op="avg")),
        "bool_sum": outcome(lambda: c.allreduce(torch.ones(4, dtype=torch.bool), op="sum")),
        "out_shape": outcome(lambda: c.allreduce(x, out=torch.ones(9))),
        "out_dtype": outcome(lambda: c.allreduce(x, out=torch.ones(8, dtype=torch.float64))),
        "out_overlap": outcome(lambda: c.allreduce(base[:8], out=base[4:12])),
        "not_tensor": outcome(lambda: c.allreduce([1.0, 2.0])),
        "sparse": outcome(lambda: c.allreduce(torch.ones(4).to_sparse())),
        "algo": outcome(lambda: c.allreduce(x, algorithm="tree")),
        "ctor_algo": outcome(lambda: far.Communicator(algorithm="tree")),
        "ctor_timeout": outcome(lambda: far.Communicator(timeout=5)),
    }
    # Nothing was sent: the communicator still works on every rank.
    y = torch.full((8,), float(dist.get_rank() + 1))
    c.allreduce(y)
    res["after"] = float(y[0])
    c.close()
    return res


def mismatch(kind, algorithm):
    c = far.Communicator(algorithm=algorithm, timeout=timedelta(seconds=30))
    r = dist.get_rank()
    n, dtype, op = 1000, torch.float32, "sum"
    if kind == "size":
        n = 1000 + (r == 1)
    elif kind == "dtype":
        dtype = torch.float64 if r == 1 else torch.float32
    elif kind == "op":
        op = "max" if r == 1 else "sum"
    elif kind == "count_zero":
        n = 0 if r == 1 else 10
    first = outcome(lambda: c.allreduce(torch.ones(n, dtype=dtype), op=op))
    second = outcome(lambda: c.allreduce(torch.ones(4)))
    c.close()
    return first, second


def mismatch_hierarchical(kind, hosts):
    """Mismatched calls on simulated hosts, where the header check runs beside the shared-memory
    stages: within a host (rank 1 differs), across hosts (every rank of the last host differs),
    or one rank on another path (rank 0 calls ring, the others hierarchical)."""
    r = dist.get_rank()
    c = far.Communicator(algorithm="hierarchical", timeout=timedelta(seconds=30), host_id=hosts[r])
    odd = r == 1 if kind.endswith("_local") else hosts[r] == hosts[-1]
    n, dtype, op, algo = 100_000, torch.float32, "sum", None
    if kind.startswith("size"):
        n += odd
    elif kind.startswith("dtype"):
        dtype = torch.float64 if odd else dtype
    elif kind.startswith("op"):
        op = "max" if odd else op
    elif kind.startswith("count_zero"):
        n = 0 if odd else n
    elif kind == "algorithm":
        algo = "ring" if r == 0 else None
    first = outcome(lambda: c.allreduce(torch.ones(n, dtype=dtype), op=op, algorithm=algo))
    second = outcome(lambda: c.allreduce(torch.ones(4)))
    c.close()
    return first, second


def stop_calling(algorithm, timeout_s):
    """Rank 1 never calls: the others time out naming it."""
    c = far.Communicator(algorithm=algorithm, timeout=timedelta(seconds=timeout_s))
    if dist.get_rank() == 1:
        time.sleep(timeout_s + 3)
        c.abort("test over")
        return ("skipped", None, 0.0)
    res = outcome(lambda: c.allreduce(torch.ones(1000)))
    c.close()
    return res


def killed(algorithm, timeout_s, victim):
    """The victim rank is SIGKILLed in the middle of a large allreduce."""
    c = far.Communicator(algorithm=algorithm, timeout=timedelta(seconds=timeout_s))
    x = torch.ones(4_000_000)
    c.allreduce(x)  # everyone is set up
    if dist.get_rank() == victim:
        fut = c.allreduce(torch.ones(4_000_000), async_op=True)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    res = outcome(lambda: [c.allreduce(x) for _ in range(3)])
    try:
        c.close()
    except Exception:  # noqa: BLE001
        pass
    return res


def nan_inf(hosts=None):
    """max/min/sum with NaN and infinities. The last element is a NaN with a payload of each
    rank's own, so the results' bits show whether every rank reduced in the same order."""
    r = dist.get_rank()
    c = far.Communicator(algorithm="auto", host_id=hosts[r] if hosts else None)
    algos = ("hierarchical",) if hosts else ("ring", "halving_doubling", "shm")
    out = {}
    for algo in algos:
        payload = torch.tensor([0x7FC00001 + r], dtype=torch.int32).view(torch.float32)
        x = torch.cat([torch.tensor([float("nan") if r == 0 else 1.0, 2.0, float("inf"),
                                     -float("inf") if r == 1 else 0.0]), payload])
        res = [c.allreduce(x.clone(), op=op, algorithm=algo) for op in ("max", "min", "sum")]
        out[algo] = tuple(t[:4].tolist() for t in res) + (tuple(t.view(torch.int32)[4].item() for t in res),)
    c.close()
    return out


def close_with_queued_ops():
    c = far.Communicator()
    futs = [c.allreduce(torch.full((1000,), 1.0), async_op=True) for _ in range(20)]
    c.close()  # drains
    vals = [float(f.wait()[0]) for f in futs]
    closed = outcome(lambda: c.allreduce(torch.ones(2)))
    return vals, closed


def drop_with_op_in_flight():
    """Rank 0 drops its last reference to a Communicator (and to the tensor and future of an async
    allreduce still waiting for rank 1) while holding the GIL, as a Python frame teardown does.

    The destructor joins the worker thread, which must drop the op's tensor (a Python object)
    and so needs the GIL: deleting with the GIL held deadlocked (found in the DDP suite).
    """
    c = far.Communicator(timeout=timedelta(seconds=20))
    if dist.get_rank() != 0:
        time.sleep(3.0)  # never joins the op: rank 0's worker is still waiting when it is dropped
        del c
        return None
    t = torch.ones(1 << 18)
    fut = c.allreduce(t, async_op=True)
    del fut, t
    time.sleep(0.3)
    t0 = time.monotonic()
    del c  # last reference: abandons the op, joins the worker
    return time.monotonic() - t0


def fork_child():
    c = far.Communicator()
    c.allreduce(torch.ones(4))
    pid = os.fork()
    if pid == 0:
        try:
            c.allreduce(torch.ones(4))
            os._exit(3)
        except RuntimeError as e:
            os._exit(7 if "forked child" in str(e) else 5)
    _, status = os.waitpid(pid, 0)
    c.allreduce(torch.ones(4))
    c.close()
    return os.waitstatus_to_exitcode(status)


def two_communicators():
    """Two communicators on two different groups used at once (async, interleaved)."""
    world = dist.get_world_size()
    g2 = dist.new_group(list(range(world)))
    a = far.Communicator(algorithm="shm")
    b = far.Communicator(g2, algorithm="ring")
    futs = []
    for i in range(20):
        futs.append((a.allreduce(torch.full((5000,), float(i)), async_op=True), i))
        futs.append((b.allreduce(torch.full((777,), float(i + 1)), op="max", async_op=True), -(i + 1)))
    out = []
    for f, tag in futs:
        v = f.wait()
        out.append(float(v[0]) == (tag * world if tag >= 0 else -tag))
    a.close()
    b.close()
    return all(out)


def subgroup_then_world():
    """A communicator over a subgroup, then one over the world: names must agree on every rank."""
    sub = dist.new_group([0, 2])
    if dist.get_rank() in (0, 2):
        a = far.Communicator(sub, timeout=timedelta(seconds=30))
        x = torch.ones(10)
        a.allreduce(x)
        a.close()
    b = far.Communicator(timeout=timedelta(seconds=30))
    y = torch.ones(10)
    b.allreduce(y)
    b.close()
    return float(y[0])


def peer_exits(hosts, victim, timeout_s):
    """Ranks on simulated hosts (the point-to-point path between them); after one allreduce the
    victim's process exits. The others' next allreduce must raise one of our errors naming the
    victim, abort the communicator, and leave the next call a ClosedError."""
    r = dist.get_rank()
    c = far.Communicator(timeout=timedelta(seconds=timeout_s), host_id=hosts[r])
    x = torch.ones(1 << 16)
    c.allreduce(x)
    if r == victim:
        # As a finished script exits: its communicator and groups closed, the sockets with them.
        c.close()
        del c
        dist.destroy_process_group()
        os._exit(0)
    time.sleep(2.0)  # the victim is gone: its connections are closed
    first = outcome(lambda: c.allreduce(torch.ones(1 << 16)))
    aborted = c.aborted
    second = outcome(lambda: c.allreduce(torch.ones(4)))
    try:
        c.close()
    except Exception:  # noqa: BLE001
        pass
    return first, aborted, second


def default_timeouts():
    """Communicator() takes its group's timeout: the default group's (the pool made it with 120 s)
    and a subgroup's own."""
    sub = dist.new_group(list(range(dist.get_world_size())), timeout=timedelta(seconds=7))
    out = []
    for g in (None, sub):
        c = far.Communicator(g)
        out.append(c.timeout.total_seconds())
        c.close()
    return out
