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
    if dtype == torch.bool:
        err = float((res != ref).sum())
    elif dtype.is_floating_point:
        diff = (res.double() - ref.double()).abs()
        both_nan = torch.isnan(res.double()) & torch.isnan(ref.double())
        err = float(torch.where(both_nan, torch.zeros_like(diff), diff).nan_to_num(float("inf")).max()) if n else 0.0
    else:
        err = float((res.long() - ref.long()).abs().max()) if n else 0.0
    digest = hashlib.sha1(res.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest() if n else ""
    return err, digest, c.last_algorithm


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
