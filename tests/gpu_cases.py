"""Functions that run on the ranks of a RankPool for the GPU tests (tests/test_gpu.py).

Rank r uses GPU r (at world size 1: GPU 0). Inputs are exact small integers, so that every
order of summation gives the same bits and results compare exactly with a CPU reference
computed from every rank's input (each rank can make all of them: the generator is seeded by rank).
"""
import torch
import torch.distributed as dist

import dist_cases
import fastallreduce as far

OPS = ("sum", "avg", "product", "max", "min")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int64, torch.int8,
          torch.uint8, torch.bool)
SIZES = (0, 1, 7, (3 << 20) + 5)  # empty, one, odd, multi-MiB


def device() -> torch.device:
    torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
    return torch.device("cuda", torch.cuda.current_device())


def _valid(op, dtype):
    if dtype == torch.bool:
        return op in ("max", "min")
    return op != "avg" or dtype.is_floating_point


def _inputs(n, dtype, seed, op):
    kind = "pm2" if op == "product" else "int"
    return [dist_cases.make_input(r, n, dtype, seed, kind) for r in range(dist.get_world_size())]


def _expected(xs, op):
    world = len(xs)
    stack = torch.stack([x.double() for x in xs])  # exact for these small integers (bool: 0 / 1)
    if op in ("sum", "avg"):
        out = stack.sum(0)
        return out / world if op == "avg" else out
    if op == "product":
        return stack.prod(0)
    return stack.amax(0) if op == "max" else stack.amin(0)


def allreduce_matrix(compare_nccl: bool = False):
    """Every op x dtype x size, sync and async, against the exact result (and, with
    ``compare_nccl``, against NCCL's dist.all_reduce on the same input in the same process)."""
    dev, comm = device(), dist_cases.comm()
    bad = []
    for op in OPS:
        for dtype in DTYPES:
            if not _valid(op, dtype):
                continue
            for n in SIZES:
                xs = _inputs(n, dtype, seed=n % 97, op=op)
                want = _expected(xs, op)
                for async_op in (False, True):
                    t = xs[dist.get_rank()].to(dev)
                    res = comm.allreduce(t, op=op, async_op=async_op)
                    got = (res.wait() if async_op else res).cpu()
                    if not torch.equal(got, want.to(got.dtype)):
                        bad.append(("comm", op, str(dtype), n, async_op))
                if compare_nccl and op != "avg" and dtype != torch.bool:
                    t = xs[dist.get_rank()].to(dev)
                    dist.all_reduce(t, op=getattr(dist.ReduceOp, op.upper()))
                    if not torch.equal(t.cpu(), want.to(dtype)):
                        bad.append(("nccl", op, str(dtype), n))
    return bad, comm.last_algorithm


def gather_family():
    """broadcast, all_gather and reduce_scatter of CUDA tensors, sync and async, exact."""
    dev, comm = device(), dist_cases.comm()
    rank, world = dist.get_rank(), dist.get_world_size()
    bad = []
    for n in (0, 1, 7, 1 << 18):
        for async_op in (False, True):
            b = torch.full((n,), float(rank + 1), device=dev)
            r = comm.broadcast(b, src=world - 1, async_op=async_op)
            if not torch.equal((r.wait() if async_op else r).cpu(), torch.full((n,), float(world))):
                bad.append(("broadcast", n, async_op))
            x = torch.arange(n, dtype=torch.float32, device=dev) + rank
            out = torch.empty(world * n, device=dev)
            r = comm.all_gather(out, x, async_op=async_op)
            want = torch.cat([torch.arange(n, dtype=torch.float32) + q for q in range(world)])
            if not torch.equal((r.wait() if async_op else r).cpu(), want):
                bad.append(("all_gather", n, async_op))
            x = torch.arange(world * n, dtype=torch.float32, device=dev) * (rank + 1)
            out = torch.empty(n, device=dev)
            r = comm.reduce_scatter(out, x, op="sum", async_op=async_op)
            full = torch.arange(world * n, dtype=torch.float32) * sum(range(1, world + 1))
            if not torch.equal((r.wait() if async_op else r).cpu(), full[rank * n:(rank + 1) * n]):
                bad.append(("reduce_scatter", n, async_op))
    return bad


def stream_ordering():
    """The caller's current stream orders the collective, at world size 1 too. The stream is not
    the default one (the engine's worker thread runs on the default stream, so a capture that
    fell back to it would go unnoticed otherwise), the call is out of place (an in-place sum over
    one rank leaves its input unchanged), and the producer is queued on that stream behind a long
    GPU sleep: a collective issued anywhere but after it copies the zeros. A consumer queued on
    the same stream after the call (after ``wait()`` when async) must see the result.
    Returns (sync_ok, async_ok, then_ok, nccl_made)."""
    dev, comm = device(), dist_cases.comm()
    world = dist.get_world_size()
    stream = torch.cuda.Stream()
    assert stream != torch.cuda.default_stream()
    n = 1 << 20
    ok = {}
    for async_op in (False, True):
        x = torch.zeros(n, device=dev)
        y = torch.full((n,), -1.0, device=dev)
        torch.cuda.synchronize()
        with torch.cuda.stream(stream):
            torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time on this stream before x is written
            x.fill_(1.0)
            res = comm.allreduce(x, out=y, async_op=async_op)
            if async_op:
                res.wait()  # makes this stream wait for the collective
            seen = y * 2  # the consumer, on the same stream
        stream.synchronize()
        ok[async_op] = bool((seen == 2 * world).all()) and bool((y == world).all())
    # A then-callback runs with the future's streams current: it sees the result too.
    x = torch.zeros(n, device=dev)
    y = torch.full((n,), -1.0, device=dev)
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(200_000_000)
        x.fill_(2.0)
        fut = comm.allreduce(x, out=y, async_op=True)
        doubled = fut.then(lambda f: f.value() * 2).wait()
    torch.cuda.synchronize()
    then_ok = bool((doubled == 4 * world).all())
    return ok[False], ok[True], then_ok, comm._c.nccl_made


def backend_on_cuda():
    """The "fastallreduce" backend: CUDA tensors go to its NCCL group, CPU ones to the engine."""
    dev = device()
    world = dist.get_world_size()
    t = torch.ones(1000, device=dev)
    dist.all_reduce(t)
    g = torch.ones(3, device=dev) * dist.get_rank()
    out = [torch.empty(3, device=dev) for _ in range(world)]
    dist.all_gather(out, g)
    cpu = torch.ones(10)
    dist.all_reduce(cpu)
    b = far.backend.get_backend(device="cuda")
    return (bool((t == world).all()), [o.cpu().tolist() for o in out], bool((cpu == world).all()), b.nccl_made)


def arrays_cupy():
    """CuPy arrays through the Communicator: zero-copy, given back as they came."""
    import cupy

    device()
    comm = dist_cases.comm()
    a = cupy.arange(10, dtype=cupy.float32)
    same = comm.allreduce(a) is a
    b = cupy.ones(4, dtype=cupy.float32)
    fut = comm.allreduce(b, op="avg", async_op=True)
    got = fut.wait()
    return same, cupy.asnumpy(a).tolist(), got is b, cupy.asnumpy(b).tolist()


def ddp_train(**kw):
    import ddp_cases

    return ddp_cases.train(device=device(), **kw)


def ddp_train_fused(**kw):
    import ddp_cases

    return ddp_cases.train_fused(device=device(), **kw)


# ---- runnable without a GPU (tests/test_cuda_path.py) ---------------------------------------------
def construct_without_gpu():
    """A Communicator on a torch with CUDA and NCCL but no GPU: made, usable, no NCCL group yet."""
    comm = dist_cases.comm()
    t = comm.allreduce(torch.ones(3))
    return dist.is_nccl_available(), comm._c.nccl_made, t.tolist(), torch.cuda.is_available()


def numpy_arrays():
    """NumPy arrays through the Communicator: zero-copy, given back as they came; then a read-only
    array that would receive the result (ValueError here, before anything moves)."""
    import numpy as np

    comm = dist_cases.comm()
    rank, world = dist.get_rank(), dist.get_world_size()
    a = np.arange(5, dtype=np.float32) + rank
    view = torch.from_numpy(a)  # the same memory: a copy would leave it unchanged
    res = comm.allreduce(a)
    in_place = res is a and view.tolist() == a.tolist()
    out = np.empty(5, dtype=np.float32)
    res_out = comm.allreduce(a, op="max", out=out)
    fut = comm.allreduce(np.full(3, rank + 1, dtype=np.int64), async_op=True)
    got = fut.wait()
    gathered = np.empty(2 * world, dtype=np.float64)
    comm.all_gather(gathered, np.array([rank, rank], dtype=np.float64))
    errors = []
    for bad in (np.ones(3, dtype=np.float32).view(), [1.0, 2.0]):
        if isinstance(bad, np.ndarray):
            bad.flags.writeable = False
        try:
            comm.allreduce(bad)
        except Exception as e:  # noqa: BLE001 - the type is what the test checks
            errors.append((type(e).__name__, str(e)))
    return (in_place, a.tolist(), res_out is out, out.tolist(), type(fut).__name__, got.tolist(),
            gathered.tolist(), errors)
