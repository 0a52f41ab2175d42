"""Functions that run on the ranks of a RankPool (importable by the spawned processes)."""
import hashlib
from datetime import timedelta

import torch
import torch.distributed as dist

import fastallreduce as far

_comms: dict = {}


def comm(algorithm="auto", hosts=None, **kw):
    """One communicator per (algorithm, simulated hosts, options) per process, reused across test cases.

    Every rank must pass the same arguments (the cache key must agree across ranks).
    """
    key = (algorithm, tuple(hosts or ()), tuple(sorted(kw.items())))
    if hosts:
        kw["host_id"] = hosts[dist.get_rank()]
    c = _comms.get(key)
    if c is None or c.aborted:
        c = _comms[key] = far.Communicator(algorithm=algorithm, **kw)
    return c


def make_input(rank, n, dtype, seed, kind="int"):
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool()
    if kind == "int" or not dtype.is_floating_point:
        lo, hi = (-3, 4) if dtype != torch.uint8 else (0, 4)
        return torch.randint(lo, hi, (n,), generator=g).to(dtype)
    if kind == "pm2":  # products stay exact in every dtype: factors in {-2, -1, 1, 2}
        v = torch.tensor([-2, -1, 1, 2])[torch.randint(0, 4, (n,), generator=g)]
        return v.to(dtype)
    return torch.randn(n, generator=g, dtype=torch.float64).to(dtype)


def reference(x, op):
    """torch.distributed.all_reduce on the default (gloo) group; avg as sum / world."""
    y = x.clone()
    w = dist.get_world_size()
    if op == "avg":
        z = y.double() if y.dtype in (torch.float16, torch.bfloat16) else y
        dist.all_reduce(z, op=dist.ReduceOp.SUM)
        return (z / w).to(x.dtype)
    if x.dtype == torch.bool:
        z = y.to(torch.uint8)
        dist.all_reduce(z, op={"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
        return z.bool()
    if x.dtype in (torch.float16, torch.bfloat16):
        z = y.double()  # gloo's 16-bit arithmetic order differs; compare in exact arithmetic
        dist.all_reduce(z, op=getattr(dist.ReduceOp, op.upper()))
        return z.to(x.dtype)
    dist.all_reduce(y, op=getattr(dist.ReduceOp, op.upper()))
    return y


def check_allreduce(algorithm, n, dtype_name, op, seed=0, out_of_place=False, kind="int", hosts=None,
                    async_op=False):
    """Runs one allreduce; returns (max abs error vs reference, result bytes hash, algorithm used).

    hosts: per-rank host labels to simulate several hosts on this machine.
    """
    dtype = getattr(torch, dtype_name)
    x = make_input(dist.get_rank(), n, dtype, seed, kind)
    ref = reference(x, op)
    c = comm(algorithm, hosts, timeout=timedelta(seconds=60))
    if out_of_place:
        keep = x.clone()
        out = torch.empty_like(x)
        res = c.allreduce(x, op=op, out=out)
        assert res is out
        assert torch.equal(x, keep), "out-of-place allreduce modified its input"
    elif async_op:
        fut = c.allreduce(x, op=op, async_op=True)
        res = fut.wait()
        assert res.data_ptr() == x.data_ptr()
    else:
        res = c.allreduce(x, op=op)
        assert res is x
    p2p = c.last_algorithm in ("ring", "halving_doubling", "hierarchical")
    return avg16_error(res, ref, op, p2p), digest_of(res), c.last_algorithm


def avg16_error(res, ref, op, p2p):
    """error(); but a 16-bit avg on the point-to-point paths divides before summing (no overflow
    where the average fits), rounding each share: it must be within a few ulps of the exact
    average (counted as the number of elements outside that), not bit-equal to it."""
    if not (p2p and op == "avg" and res.dtype in (torch.float16, torch.bfloat16)):
        return error(res, ref)
    tol = torch.finfo(res.dtype).eps * dist.get_world_size()
    return float((res.double() - ref.double()).abs().gt(tol * ref.double().abs().clamp(min=1)).sum())


def error(res, ref):
    """Max abs difference (NaN against NaN counts as equal; bool: number of differing elements)."""
    if res.numel() == 0:
        return 0.0
    if res.dtype == torch.bool:
        return float((res != ref).sum())
    if res.dtype.is_floating_point:
        diff = (res.double() - ref.double()).abs()
        both_nan = torch.isnan(res.double()) & torch.isnan(ref.double())
        return float(torch.where(both_nan, torch.zeros_like(diff), diff).nan_to_num(float("inf")).max())
    return float((res.long() - ref.long()).abs().max())


def digest_of(t):
    return hashlib.sha1(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest() if t.numel() else ""


DTYPES = ["float32", "float64", "float16", "bfloat16", "int8", "uint8", "int32", "int64", "bool"]
OPS = ["sum", "avg", "product", "max", "min"]


def valid(dtype_name, op):
    if dtype_name == "bool":
        return op in ("max", "min")
    if op == "avg":
        return dtype_name.startswith(("float", "bfloat"))
    return True


def run_cases(cases, hosts=None):
    """Runs many (algorithm, n, dtype, op, seed, out_of_place, kind, async) cases on one rank."""
    out = []
    for algorithm, n, dtype_name, op, seed, oop, kind, async_op in cases:
        out.append(check_allreduce(algorithm, n, dtype_name, op, seed=seed, out_of_place=oop, kind=kind,
                                   hosts=hosts, async_op=async_op))
    return out


def check_family(cases, hosts=None):
    """The Communicator's broadcast / all_gather / reduce_scatter on exactly computable inputs.

    Each case is (kind, n, dtype, op, seed, async_op); n is elements per rank block. Broadcasts
    and gathers must equal the other ranks' inputs bit for bit (each rank regenerates them from
    their seeds); reduce_scatter must equal this rank's block of gloo's all_reduce of the whole
    input. Returns (error, result digest, engine path) per case.
    """
    c = comm("auto", hosts, timeout=timedelta(seconds=60))
    rank, k = dist.get_rank(), dist.get_world_size()
    out = []
    for kind, n, dtype_name, op, seed, async_op in cases:
        dtype = getattr(torch, dtype_name)
        finish = (lambda r: r.wait()) if async_op else (lambda r: r)
        if kind == "broadcast":
            root = seed % k
            t = make_input(rank, n, dtype, seed)
            res = finish(c.broadcast(t, src=root, async_op=async_op))
            assert res.data_ptr() == t.data_ptr()
            ref = make_input(root, n, dtype, seed)
        elif kind == "all_gather":
            x = make_input(rank, n, dtype, seed).reshape(n, 1)  # any shape: gathered flat
            keep = x.clone()
            res = finish(c.all_gather(torch.empty(k * n, dtype=dtype), x, async_op=async_op))
            assert torch.equal(x, keep), "all_gather modified its input"
            ref = torch.cat([make_input(r, n, dtype, seed) for r in range(k)])
        else:
            x = make_input(rank, k * n, dtype, seed, "pm2" if op == "product" else "int")
            keep = x.clone()
            ref = reference(x, op)[rank * n:(rank + 1) * n]
            res = finish(c.reduce_scatter(torch.empty(n, dtype=dtype), x, op=op, async_op=async_op))
            assert torch.equal(x, keep), "reduce_scatter modified its input"
        assert res.dtype == dtype and res.numel() == ref.numel(), (res.dtype, res.shape, ref.shape)
        # Every rank must hold the same bytes after a broadcast or gather (its own block after a reduce_scatter).
        digest = digest_of(res) if kind != "reduce_scatter" else kind
        out.append((avg16_error(res, ref, op, not c._c.single_host), digest, c._c.single_host))
    return out


def family_bad_inputs():
    """Bad arguments raise before anything is sent: a good call right after still works."""
    c = comm("auto", timeout=timedelta(seconds=30))
    k = dist.get_world_size()
    x = torch.arange(4.0)
    raised = []
    for call in (
        lambda: c.all_gather(torch.empty(4 * k + 1), x),  # wrong output size
        lambda: c.all_gather(torch.empty(4 * k, dtype=torch.float64), x),  # dtype differs
        lambda: c.reduce_scatter(torch.empty(3), x.repeat(k)),  # input is not size x output
        lambda: c.reduce_scatter(torch.empty(4, dtype=torch.int32), x.int().repeat(k), op="avg"),  # avg on ints
        lambda: c.broadcast(x, src=k),  # no such rank
        lambda: c.broadcast(x, src=-1),
        lambda: c.broadcast(torch.arange(8.0)[::2]),  # not contiguous: staged (every rank calls it)
        lambda: c.all_gather(x, x),  # overlap
        lambda: c.reduce_scatter(torch.empty(4), x.repeat(k), op="xor"),
        lambda: c.broadcast([1, 2]),
        lambda: c.broadcast(torch.ones(2, dtype=torch.complex64)),
    ):
        try:
            call()
            raised.append(None)
        except (TypeError, ValueError) as e:
            raised.append(type(e).__name__)
    y = torch.full((3,), float(dist.get_rank()))
    c.broadcast(y, src=k - 1)
    return raised, y.tolist()


def family_mismatch():
    """Rank 0 broadcasts while the others all_gather: MismatchError on every rank."""
    c = far.Communicator(timeout=timedelta(seconds=20))
    try:
        if dist.get_rank() == 0:
            c.broadcast(torch.ones(4), src=0)
        else:
            c.all_gather(torch.empty(4 * dist.get_world_size()), torch.ones(4))
        return "no error"
    except far.MismatchError as e:
        return f"MismatchError: {e}"
    finally:
        c.close()


def worker_policy(idle: str):
    """Scheduling policy of this process's fastallreduce worker thread, with FASTALLREDUCE_WORKER_IDLE=idle."""
    import os

    def workers():
        return {t for t in os.listdir("/proc/self/task") if open(f"/proc/self/task/{t}/comm").read().strip() == "far-worker"}

    before = workers()  # communicators earlier tests left in this process
    os.environ["FASTALLREDUCE_WORKER_IDLE"] = idle
    try:
        c = far.Communicator()
    finally:
        del os.environ["FASTALLREDUCE_WORKER_IDLE"]
    try:
        c.allreduce(torch.ones(4), async_op=True).wait()
        pols = [os.sched_getscheduler(int(t)) for t in workers() - before]
        return pols, os.SCHED_IDLE
    finally:
        c.close()
