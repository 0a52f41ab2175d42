"""Functions that run on the ranks of a RankPool whose default group uses backend="fastallreduce".

Every case compares a group on this backend with a gloo group over the same ranks (0..k-1), on
the same inputs. Ranks outside the group return None.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

import fastallreduce as far

_groups: dict = {}

DTYPES = ["float32", "float64", "float16", "bfloat16", "int8", "uint8", "int32", "int64", "bool", "int16"]
OPS = ["SUM", "AVG", "PRODUCT", "MAX", "MIN"]


def setup_groups() -> None:
    """Creates, once, a fastallreduce and a gloo group over ranks 0..k-1 for every k (collective)."""
    if _groups:
        return
    world = dist.get_world_size()
    for k in range(1, world + 1):
        ranks = list(range(k))
        far_g = dist.group.WORLD if k == world else dist.new_group(ranks)  # default backend
        gloo_g = dist.new_group(ranks, backend="gloo")
        _groups[k] = (far_g, gloo_g)


def _member(k: int) -> bool:
    setup_groups()
    return dist.get_rank() < k


def _input(rank: int, n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    # Small integers: every sum, product, max and min is exact in every dtype.
    g = torch.Generator().manual_seed(seed * 100 + rank)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool()
    lo, hi = (0, 4) if dtype == torch.uint8 else (-3, 4)
    return torch.randint(lo, hi, (n,), generator=g).to(dtype)


def _outcome(fn: Callable[[], Any]) -> tuple:
    try:
        return ("ok", fn())
    except Exception as e:  # noqa: BLE001 - the comparison is of outcomes, errors included
        return ("err", type(e).__name__, str(e)[:200])


def _case(k: int) -> tuple:
    """The fastallreduce and gloo groups over ranks 0..k-1, the backend object, this rank."""
    far_g, gloo_g = _groups[k]
    return far_g, gloo_g, far.backend.get_backend(far_g), dist.get_rank()


def allreduce_vs_gloo(k: int, async_op: bool, sizes: tuple = (0, 1, 7, 3001)) -> Optional[dict]:
    """all_reduce on the fastallreduce group vs gloo for every dtype and op; returns a summary."""
    if not _member(k):
        return None
    far_g, gloo_g, backend, rank = _case(k)
    checked = engine_expected = 0
    ops_before = backend.engine_ops
    for dtype_name in DTYPES:
        dtype = getattr(torch, dtype_name)
        for op_name in OPS:
            op = getattr(dist.ReduceOp, op_name)
            for n in sizes:
                x = _input(rank, n, dtype, seed=n + len(op_name))
                mine = x.clone()

                def run() -> torch.Tensor:
                    if async_op:
                        work = dist.all_reduce(mine, op=op, group=far_g, async_op=True)
                        fut = work.get_future()
                        work.wait(timeout=timedelta(seconds=60))
                        assert work.is_completed(), "work not completed after wait()"
                        value = fut.wait()
                        assert isinstance(value, list) and value[0].data_ptr() == mine.data_ptr(), value
                    else:
                        assert dist.all_reduce(mine, op=op, group=far_g) is None
                    return mine

                got = _outcome(run)
                integral = not (dtype.is_floating_point or dtype.is_complex)
                if op_name == "AVG" and integral:
                    # No silent truncation: TypeError (torch.distributed's class for a bad dtype).
                    assert got[0] == "err" and got[1] == "TypeError", (dtype_name, op_name, got)
                    checked += 1
                    continue
                ref_op = dist.ReduceOp.SUM if op_name == "AVG" else op
                ref_x = x.double() if dtype in (torch.float16, torch.bfloat16) else x.clone()
                ref = _outcome(lambda: (dist.all_reduce(ref_x, op=ref_op, group=gloo_g), ref_x)[1])
                if ref[0] == "err":
                    # Gloo refuses it (e.g. bool sum): the backend must refuse it the same way.
                    assert got[0] == "err" and got[1] == ref[1], (dtype_name, op_name, got, ref)
                    checked += 1
                    continue
                assert got[0] == "ok", (dtype_name, op_name, n, got)
                expect = ref[1] / k if op_name == "AVG" else ref[1]
                if dtype == torch.bool:
                    assert torch.equal(got[1], expect.bool()), (dtype_name, op_name)
                elif dtype.is_floating_point:
                    tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-12
                    torch.testing.assert_close(got[1].double(), expect.double().to(dtype).double(), rtol=tol, atol=tol)
                else:
                    assert torch.equal(got[1], expect), (dtype_name, op_name, n)
                checked += 1
                if dtype_name != "int16" and not (dtype == torch.bool and op_name not in ("MAX", "MIN")):
                    engine_expected += 1
    return {"checked": checked, "engine_ops": backend.engine_ops - ops_before, "engine_expected": engine_expected}


def gather_family_vs_expected(k: int, async_op: bool, sizes: tuple = (0, 1, 7, 3001)) -> Optional[dict]:
    """broadcast, all_gather(_into_tensor) and reduce_scatter(_tensor) on the fastallreduce group,
    every dtype (and op), against exact answers: each rank can compute every rank's input, so
    gathers and broadcasts are checked element by element; reductions against gloo's all_reduce
    of the same inputs. Calls the engine cannot take must behave as on gloo."""
    if not _member(k):
        return None
    far_g, gloo_g, backend, rank = _case(k)
    checked = engine_expected = 0
    ops_before = backend.engine_ops

    engine_call = [True]  # whether the call being made is one the engine takes (Gloo's have no Future)

    def finish(work):
        if async_op:
            fut = work.get_future() if engine_call[0] else None
            work.wait(timeout=timedelta(seconds=60))
            assert not engine_call[0] or (work.is_completed() and fut.done())
        return work

    for dtype_name in DTYPES:
        dtype = getattr(torch, dtype_name)
        on_engine = dtype_name != "int16"  # the engine's kernels have no int16
        for n in sizes:
            seed = n + len(dtype_name)
            inputs = [_input(r, n, dtype, seed) for r in range(k)]
            def check(call_far, call_gloo, result, expect, what):
                # The engine's dtypes: the exact answer. Others (int16): whatever gloo does.
                nonlocal checked, engine_expected
                engine_call[0] = on_engine
                got = _outcome(call_far)
                if on_engine:
                    assert got[0] == "ok", (what, dtype_name, n, got)
                    assert expect(result()), (what, dtype_name, n)
                    engine_expected += 1
                else:
                    g = _outcome(call_gloo)
                    assert got[0] == g[0] and (got[0] == "ok" or got[1] == g[1]), (what, dtype_name, got, g)
                checked += 1

            for root in range(k):  # broadcast from every root
                t, tg = inputs[rank].clone(), inputs[rank].clone()
                check(lambda: finish(dist.broadcast(t, src=root, group=far_g, async_op=async_op)),
                      lambda: dist.broadcast(tg, src=root, group=gloo_g), lambda: t,
                      lambda r: torch.equal(r, inputs[root]), f"broadcast root {root}")
            out = torch.empty(k * n, dtype=dtype)
            check(lambda: finish(dist.all_gather_into_tensor(out, inputs[rank], group=far_g, async_op=async_op)),
                  lambda: dist.all_gather_into_tensor(torch.empty(k * n, dtype=dtype), inputs[rank], group=gloo_g),
                  lambda: out, lambda r: torch.equal(r, torch.cat(inputs)), "all_gather_into_tensor")
            single = torch.empty(k * n, dtype=dtype)
            if hasattr(dist, "all_gather_single"):  # torch's Python API from 2.13
                check(lambda: finish(dist.all_gather_single(single, inputs[rank], group=far_g, async_op=async_op)),
                      lambda: dist.all_gather_single(torch.empty(k * n, dtype=dtype), inputs[rank], group=gloo_g),
                      lambda: single, lambda r: torch.equal(r, torch.cat(inputs)), "all_gather_single")
            outs = [torch.full((n,), 1, dtype=dtype) for _ in range(k)]
            check(lambda: finish(dist.all_gather(outs, inputs[rank], group=far_g, async_op=async_op)),
                  lambda: dist.all_gather([torch.empty(n, dtype=dtype) for _ in range(k)], inputs[rank], group=gloo_g),
                  lambda: outs, lambda r: all(torch.equal(o, i) for o, i in zip(r, inputs)), "all_gather")
            # reduce_scatter_tensor and reduce_scatter, every op
            big = _input(rank, k * n, dtype, seed + 1)
            for op_name in OPS:
                op = getattr(dist.ReduceOp, op_name)
                integral = not (dtype.is_floating_point or dtype.is_complex)
                eligible = on_engine and not (op_name == "AVG" and integral) and not (
                    dtype == torch.bool and op_name not in ("MAX", "MIN"))
                ref_op = dist.ReduceOp.SUM if op_name == "AVG" else op
                ref_x = big.double() if dtype in (torch.float16, torch.bfloat16) else big.clone()
                ref = _outcome(lambda: (dist.all_reduce(ref_x, op=ref_op, group=gloo_g), ref_x)[1])
                for form in ("tensor", "single", "list") if hasattr(dist, "reduce_scatter_single") else ("tensor", "list"):
                    mine = torch.empty(n, dtype=dtype)
                    if form == "tensor":
                        call = lambda: finish(dist.reduce_scatter_tensor(mine, big, op=op, group=far_g, async_op=async_op))
                    elif form == "single":
                        call = lambda: finish(dist.reduce_scatter_single(mine, big, op=op, group=far_g, async_op=async_op))
                    else:
                        call = lambda: finish(dist.reduce_scatter(mine, list(big.chunk(k)) if n else [big[:0]] * k,
                                                                  op=op, group=far_g, async_op=async_op))
                    engine_call[0] = eligible
                    got = _outcome(call)
                    if not eligible:
                        # Not the engine's: gloo's own reduce_scatter decides (and raises what it raises).
                        g_out = torch.empty(n, dtype=dtype)
                        g = _outcome(lambda: dist.reduce_scatter_tensor(g_out, big, op=op, group=gloo_g))
                        assert got[0] == g[0] and (got[0] == "ok" or got[1] == g[1]), (dtype_name, op_name, got, g)
                        if got[0] == "ok":
                            assert torch.equal(mine, g_out), (dtype_name, op_name, form)
                        checked += 1
                        continue
                    assert got[0] == "ok" and ref[0] == "ok", (dtype_name, op_name, n, form, got, ref)
                    expect = ref[1][rank * n:(rank + 1) * n]
                    expect = expect / k if op_name == "AVG" else expect
                    if dtype == torch.bool:
                        assert torch.equal(mine, expect.bool()), (dtype_name, op_name, form)
                    elif dtype.is_floating_point:
                        tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-12
                        torch.testing.assert_close(mine.double(), expect.double().to(dtype).double(), rtol=tol, atol=tol)
                    else:
                        assert torch.equal(mine, expect), (dtype_name, op_name, n, form)
                    checked += 1
                    engine_expected += 1
    return {"checked": checked, "engine_ops": backend.engine_ops - ops_before, "engine_expected": engine_expected}


def _p2p_ring(g: dist.ProcessGroup, rank: int, k: int) -> torch.Tensor:
    out = torch.zeros(3)
    if k == 1:
        return out
    send = dist.isend(torch.full((3,), float(rank)), (rank + 1) % k, group=g)
    dist.recv(out, (rank - 1) % k, group=g)
    send.wait()
    return out


def others_vs_gloo(k: int) -> Optional[dict]:
    """Every other torch.distributed collective on the fastallreduce group vs gloo."""
    if not _member(k):
        return None
    far_g, gloo_g = _groups[k]
    rank = dist.get_rank()
    base = torch.arange(6, dtype=torch.float32) + 10 * rank

    def cases(g: dist.ProcessGroup) -> dict:
        out: dict = {}

        def case(name: str, fn: Callable[[], Any]) -> None:
            out[name] = _outcome(fn)

        def bcast():
            t = base.clone(); dist.broadcast(t, src=k - 1, group=g); return t
        def all_gather():
            ts = [torch.zeros(6) for _ in range(k)]; dist.all_gather(ts, base, group=g); return ts
        def all_gather_into():
            t = torch.zeros(6 * k); dist.all_gather_into_tensor(t, base, group=g); return t
        def gather():
            ts = [torch.zeros(6) for _ in range(k)] if rank == 0 else None
            dist.gather(base, ts, dst=0, group=g); return ts
        def scatter():
            t = torch.zeros(6)
            dist.scatter(t, [base + i for i in range(k)] if rank == 0 else None, src=0, group=g); return t
        def reduce():
            t = base.clone(); dist.reduce(t, dst=0, op=dist.ReduceOp.MAX, group=g); return t if rank == 0 else None
        def reduce_scatter_tensor():
            t = torch.zeros(2); dist.reduce_scatter_tensor(t, torch.arange(2.0 * k) + rank, group=g); return t
        def reduce_scatter():
            t = torch.zeros(2); dist.reduce_scatter(t, [torch.full((2,), float(rank + i)) for i in range(k)], group=g); return t
        def all_to_all_single():
            t = torch.zeros(2 * k); dist.all_to_all_single(t, torch.arange(2.0 * k) + 100 * rank, group=g); return t
        def all_to_all():
            outs = [torch.zeros(2) for _ in range(k)]
            dist.all_to_all(outs, [torch.full((2,), float(rank * 10 + i)) for i in range(k)], group=g); return outs
        def objects():
            objs: list = [None] * k; dist.all_gather_object(objs, {"r": rank}, group=g)
            lst = [rank]; dist.broadcast_object_list(lst, src=0, group=g); return objs, lst
        def band():
            t = torch.tensor([7, 5, 12], dtype=torch.int32) + rank; dist.all_reduce(t, op=dist.ReduceOp.BAND, group=g); return t
        def premul():
            t = torch.ones(3); dist.all_reduce(t, op=dist._make_nccl_premul_sum(2.0), group=g); return t
        def barriers():
            w = dist.barrier(group=g, async_op=True); w.wait(); assert w.is_completed()
            try:
                dist.monitored_barrier(group=g, timeout=timedelta(seconds=30))
            except ValueError as e:  # torch before 2.14 refuses it in Python for any backend but Gloo
                if "only implemented for GLOO" not in str(e):
                    raise
            return True
        def sparse():
            i = torch.tensor([[rank % 3]]); v = torch.tensor([1.0])
            t = torch.sparse_coo_tensor(i, v, (3,)); dist.all_reduce(t, group=g); return t.to_dense()
        def noncontig():
            t = torch.arange(8.0).reshape(2, 4).t() + rank; dist.all_reduce(t, group=g); return t
        def coalesced():
            ts = [torch.ones(3) * rank, torch.ones(2)]
            dist.all_reduce_coalesced(ts, group=g); return ts

        # barriers first: Gloo's own barrier (the reference) rethrows a prior failed op's error on
        # whichever ranks still list that op as in flight -- a race -- so on the gloo group a
        # barrier right after premul's failure could raise on one rank and hang the others.
        for fn in (barriers, bcast, all_gather, all_gather_into, gather, scatter, reduce, reduce_scatter_tensor,
                   reduce_scatter, all_to_all_single, all_to_all, objects, band, premul, sparse,
                   noncontig, coalesced):
            case(fn.__name__, fn)
        case("p2p", lambda: _p2p_ring(g, rank, k))
        return out

    mine, ref = cases(far_g), cases(gloo_g)
    diffs = []
    for name in ref:
        a, b = mine[name], ref[name]
        if a[0] != b[0] or (a[0] == "err" and a[1] != b[1]):
            diffs.append((name, a, b))
        elif a[0] == "ok" and not _same(a[1], b[1]):
            diffs.append((name, a, b))
    return {"diffs": diffs, "names": sorted(ref), "errors": sorted(n for n in ref if ref[n][0] == "err")}


def barrier_after_failure(k: int, iters: int = 40, backend_name: str = "fastallreduce") -> Optional[dict]:
    """A collective that fails inside the delegate (PREMUL_SUM), then a barrier, ``iters`` times.

    On a plain Gloo group this raises the earlier error on some ranks and times out on the others
    (Gloo's barrier races with its prior-work list); the fastallreduce barrier must pass on every
    rank every time. Returns per-iteration outcomes.
    """
    if not _member(k):
        return None
    g = _groups[k][0] if backend_name == "fastallreduce" else _groups[k][1]
    failures, barriers_ok = 0, 0
    for _ in range(iters):
        try:
            dist.all_reduce(torch.ones(3), op=dist._make_nccl_premul_sum(2.0), group=g)
        except Exception:  # noqa: BLE001 - the failure is the point
            failures += 1
        w = dist.barrier(group=g, async_op=True)
        w.wait()
        barriers_ok += int(w.is_completed())
        dist.barrier(group=g)  # the synchronous form too
    return {"failures": failures, "barriers_ok": barriers_ok}


def barrier_orders_after_async_allreduce(k: int) -> Optional[dict]:
    """Async engine allreduces, then a barrier: by the barrier's end they have all completed here."""
    if not _member(k):
        return None
    g = _groups[k][0]
    ts = [torch.full((1 << 16,), float(i)) for i in range(6)]
    works = [dist.all_reduce(t, group=g, async_op=True) for t in ts]
    dist.barrier(group=g)
    done = [w.is_completed() for w in works]
    for w in works:
        w.wait()
    return {"done_at_barrier": done, "ok": all(torch.equal(t, torch.full_like(t, float(i * k))) for i, t in enumerate(ts))}


def sync_work_contract(k: int) -> Optional[dict]:
    """A synchronous call through the ProcessGroup API (asyncOp=False) returns a finished Work
    that still honours the whole Work contract: result(), wait(), and a Future on demand."""
    if not _member(k):
        return None
    g = _groups[k][0]
    rank = dist.get_rank()
    x = torch.arange(1001, dtype=torch.float32) + rank
    opts = dist.AllreduceOptions()
    opts.asyncOp = False
    work = g.allreduce([x], opts)
    try:
        exception = work.exception()
    except TypeError as e:  # torch before 2.14 cannot convert the exception_ptr for any backend's Work
        if "exception_ptr" not in str(e):
            raise
        exception = None
    out = {"completed": work.is_completed(), "success": work.is_success(), "exception": exception,
           "wait": work.wait(), "result_is_x": work.result()[0].data_ptr() == x.data_ptr()}
    fut = work.get_future()
    out["future_holds_x"] = fut.value()[0].data_ptr() == x.data_ptr()
    out["future_done"] = fut.done()
    out["then"] = fut.then(lambda f: float(f.value()[0].sum())).wait()
    out["value_ok"] = torch.equal(fut.value()[0], (torch.arange(1001, dtype=torch.float32) * k + k * (k - 1) / 2))
    bopts = dist.BarrierOptions()
    bopts.asyncOp = False
    bwork = g.barrier(bopts)
    out["barrier_completed"] = bwork.is_completed() and bwork.wait() and bwork.get_future().done()
    return out


def mismatch_with_allreduce(rank0_call: str) -> Optional[dict]:
    """Rank 0 makes `rank0_call` ("barrier" or "all_gather", of 4 elements) while rank 1 calls
    all_reduce of 4 elements on a fresh 2-rank group: both must raise (the engine's header
    check), neither may hang."""
    import time
    setup_groups()
    g = dist.new_group([0, 1], backend="fastallreduce", timeout=timedelta(seconds=30))  # every rank calls it
    rank = dist.get_rank()
    if rank > 1:
        return None
    t0 = time.monotonic()
    try:
        if rank == 1:
            dist.all_reduce(torch.ones(4), group=g)
        elif rank0_call == "barrier":
            dist.barrier(group=g)
        else:
            dist.all_gather_into_tensor(torch.zeros(8), torch.ones(4), group=g)
        return {"raised": None, "seconds": time.monotonic() - t0}
    except Exception as e:  # noqa: BLE001
        return {"raised": type(e).__name__, "msg": str(e)[:300], "seconds": time.monotonic() - t0}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def ddp_parity(steps: int = 12) -> Optional[dict]:
    """DDP without a hook on the fastallreduce group vs on gloo (ranks 0 and 1): same parameters."""
    if not _member(2):
        return None
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    far_g, gloo_g = _groups[2]
    backend = far.backend.get_backend(far_g)
    rank = dist.get_rank()
    params = {}
    engine_ops = 0
    for name, g in (("fastallreduce", far_g), ("gloo", gloo_g)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))
        if rank == 1:  # different initial weights: DDP's broadcast must fix them
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        ddp = DDP(model, process_group=g, bucket_cap_mb=0.01)  # several buckets
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        before = backend.engine_ops
        for step in range(steps):
            gen = torch.Generator().manual_seed(1000 * step + rank)
            x, y = torch.randn(16, 32, generator=gen), torch.randn(16, 4, generator=gen)
            opt.zero_grad()
            F.mse_loss(ddp(x), y).backward()
            opt.step()
        if name == "fastallreduce":
            engine_ops = backend.engine_ops - before
        params[name] = [p.detach().clone() for p in model.parameters()]
        del ddp
    diff = max(float((a - b).abs().max()) for a, b in zip(params["fastallreduce"], params["gloo"]))
    identical = all(torch.equal(a, b) for a, b in zip(params["fastallreduce"], params["gloo"]))
    flat = torch.cat([p.flatten() for p in params["fastallreduce"]])
    return {"max_diff": diff, "identical": identical, "engine_ops": engine_ops, "checksum": float(flat.double().sum())}


def timeout_case_rank0(seconds: float = 2.0, call: str = "all_reduce") -> Optional[dict]:
    """Rank 1 skips a collective (`call`) on a group with a short timeout: rank 0 gets DistBackendError."""
    import time
    setup_groups()
    g = dist.new_group([0, 1], timeout=timedelta(seconds=seconds))  # collective: every rank calls it
    if dist.get_rank() != 0:
        return None
    t0 = time.monotonic()
    try:
        if call == "all_reduce":
            dist.all_reduce(torch.ones(10), group=g)
        elif call == "broadcast":
            dist.broadcast(torch.ones(10), src=0, group=g)
        else:
            dist.reduce_scatter_tensor(torch.ones(5), torch.ones(10), group=g)
    except Exception as e:  # noqa: BLE001
        return {"type": type(e).__name__, "is_dist_error": isinstance(e, dist.DistBackendError),
                "msg": str(e)[:300], "seconds": time.monotonic() - t0}
    return {"type": None}


def backend_algorithm(value_on_rank1: str) -> tuple:
    """A new fastallreduce-backend group with FASTALLREDUCE_BACKEND_ALGORITHM=``value_on_rank1`` on
    rank 1 only (the others leave it unset): (exception name or "ok", its message, the sum)."""
    import os

    key = "FASTALLREDUCE_BACKEND_ALGORITHM"
    if dist.get_rank() == 1:
        os.environ[key] = value_on_rank1
    try:
        g = dist.new_group(backend="fastallreduce")
        t = torch.ones(3)
        dist.all_reduce(t, group=g)
        return ("ok", "", t.tolist())
    except Exception as e:  # noqa: BLE001 - the outcome is the result
        return (type(e).__name__, str(e), None)
    finally:
        os.environ.pop(key, None)
