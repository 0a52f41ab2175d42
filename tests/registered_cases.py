"""Registered-buffer scenarios run on the ranks of a RankPool."""
import gc
import hashlib
import os
import signal
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import fastallreduce as far
from shm_segments import segments_of

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16, "int64": torch.int64}


def _data(n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:  # not exactly summable: the order of the sum shows in the bits
        return torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    return torch.randint(-1000, 1000, (n,), generator=g, dtype=dtype)


def _bits(t):
    return t.contiguous().view(torch.uint8).clone()


def _delta(comm, before):
    now = comm.stats()
    return {k: now[k] - before[k] for k in ("bytes_copied_in", "copying_calls", "zero_copy_calls")}


def bit_identity(cases, hosts=None, algorithm="auto"):
    """Each case (n, dtype, op, offset, async): the same data reduced from an ordinary tensor
    and from a registered one (at `offset` elements into it); the bits and what each call did."""
    r = dist.get_rank()
    c = far.Communicator(algorithm=algorithm, host_id=hosts[r] if hosts else None, timeout=timedelta(seconds=60))
    out = []
    for i, (n, dt, op, offset, async_op) in enumerate(cases):
        dtype = DTYPES[dt]
        x = _data(n, dtype, 1000 * i + r)
        plain = x.clone()
        c.allreduce(plain, op=op)
        reg = c.empty(offset + n, dtype=dtype)
        view = reg[offset:]
        view.copy_(x)
        before = c.stats()
        if async_op:
            c.allreduce(view, op=op, async_op=True).wait()
        else:
            c.allreduce(view, op=op)
        d = _delta(c, before)
        out.append((bool(torch.equal(_bits(view), _bits(plain))), c.is_registered(view), d,
                    hashlib.sha1(_bits(view).numpy().tobytes()).hexdigest(), c.last_algorithm))
    c.close()
    return out


def mixed(n=100_000):
    """Rank 0's input is registered, the others' are not; then every rank's is, at offsets that
    differ. Both take the copying path on every rank and give the ordinary result's bits."""
    r = dist.get_rank()
    c = far.Communicator(timeout=timedelta(seconds=60))
    res = []
    for case in ("rank0_only", "offsets_differ"):
        x = _data(n, torch.float32, 7 + r)
        plain = x.clone()
        c.allreduce(plain)
        if case == "rank0_only":
            t = c.empty(n) if r == 0 else torch.empty(n)
        else:
            t = c.empty(n + r)[r:]
        t.copy_(x)
        before = c.stats()
        c.allreduce(t)
        res.append((case, bool(torch.equal(t, plain)), c.is_registered(t), _delta(c, before)))
    c.close()
    return res


def register_existing():
    """register() moves a tensor's storage, contents and views included; not twice."""
    c = far.Communicator(timeout=timedelta(seconds=60))
    base = torch.arange(100_000, dtype=torch.float32)
    view = base[10:20]
    old = base.data_ptr()
    moved = c.register(base)
    again = c.register(base)
    view.add_(1)  # writes through the view land in the moved storage
    out = dict(moved=moved, again=again, ptr_changed=base.data_ptr() != old, registered=c.is_registered(base),
               view_follows=view.data_ptr() == base.data_ptr() + 40, first=float(base[10]), last=float(base[-1]),
               meta_refused=not c.register(torch.ones(4, device="meta")))
    before = c.stats()
    c.allreduce(base)
    out["delta"] = _delta(c, before)
    out["sum_ok"] = float(base[-1]) == 99_999.0 * dist.get_world_size()
    out["registrations"] = c.stats()["registrations"]
    del view
    del base
    gc.collect()
    out["registrations_after_free"] = c.stats()["registrations"]
    c.close()
    return out


def empty_arguments():
    c = far.Communicator()
    out = []
    for args, kw in [(("3",), {}), ((2,), {"dtype": "float32"}), ((-1,), {})]:
        try:
            c.empty(*args, **kw)
            out.append("ok")
        except (TypeError, ValueError) as e:
            out.append(type(e).__name__)
    shape = tuple(c.empty(2, 3, dtype=torch.float64).shape) + tuple(c.empty((4,)).shape)
    c.close()
    return out, shape


def _our_maps():
    with open("/proc/self/maps") as f:
        return [line.strip() for line in f if "fastallreduce_" in line]


def _group_pids():
    pids = [None] * dist.get_world_size()
    dist.all_gather_object(pids, os.getpid())
    return pids


def released(how):
    """Registered buffers used in zero-copy calls, then the communicator ends (`how`: close,
    abort on rank 0, or rank 1 killed inside a call). Returns what the call raised, the
    segments left in /dev/shm once the communicator failed, whether a registered tensor is
    still usable past its communicator, and the mappings left once tensors and communicator
    are gone."""
    r = dist.get_rank()
    pids = _group_pids()
    c = far.Communicator(timeout=timedelta(seconds=15))
    ts = [c.empty(300_000).fill_(1.0) for _ in range(3)]
    for i in range(3):
        c.allreduce(ts[i])
    zc = c.stats()["zero_copy_calls"]
    err = None
    try:
        if how == "abort":
            if r == 0:
                c.abort("test")
                err = "aborted here"
            else:
                time.sleep(0.5)
                for i in range(3):
                    c.allreduce(ts[i])
        elif how == "kill":
            if r == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            for _ in range(200):
                c.allreduce(ts[0])
    except Exception as e:  # noqa: BLE001
        err = type(e).__name__ + ": " + str(e)
    c.close()
    segments = segments_of(pids)
    ts[0].add_(1.0)  # still valid memory after the communicator
    usable = float(ts[0][0])
    del c
    del ts
    gc.collect()
    return dict(zero_copy_calls=zc, error=err, segments=segments, usable=usable, maps=_our_maps())


def killed_while_registering():
    """Rank 1 dies right after creating a registration's segment (a failpoint), before anyone
    mapped it. The survivors' next call raises; the failure removes the dead rank's segment;
    nothing of the communicator stays mapped once it is gone."""
    r = dist.get_rank()
    pids = _group_pids()
    c = far.Communicator(timeout=timedelta(seconds=15))
    t = c.empty(300_000)
    t.fill_(1.0)
    c.allreduce(t)
    if r == 1:
        os.environ["FASTALLREDUCE_FAILPOINT"] = "registration_created"
        c.empty(300_000)  # never returns
    err = None
    try:
        time.sleep(0.5)
        c.allreduce(t)
    except Exception as e:  # noqa: BLE001
        err = type(e).__name__ + ": " + str(e)
    segments = segments_of(pids)
    c.close()
    del c, t
    gc.collect()
    return dict(error=err, segments=segments, maps=_our_maps())


def train_small_shm(limited_rank=None, steps: int = 4):
    """DDP with the averaging hook; ``limited_rank`` gets a 1 KiB file-size limit after the
    Communicator exists, so /dev/shm cannot hold its buckets' registrations (4 KiB each). Returns
    the parameters, the hook's fallbacks and the communicator's zero-copy call count."""
    import resource

    from torch.nn.parallel import DistributedDataParallel as DDP

    import ddp_cases as dc

    rank = dist.get_rank()
    torch.manual_seed(0)
    model = dc.Net()
    ddp = DDP(model, bucket_cap_mb=0.002)
    state = far.ddp.register(ddp)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    if rank == limited_rank:  # Python ignores SIGXFSZ: an oversized allocation fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, limit[1]))
    g = torch.Generator().manual_seed(100 + rank)
    try:
        for _ in range(steps):
            opt.zero_grad()
            (ddp(torch.randn(8, 16, generator=g)) ** 2).mean().backward()
            opt.step()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    return ([p.detach().clone() for p in model.parameters()], dict(state.zero_copy_fallbacks),
            state.comm.stats()["zero_copy_calls"])


def register_foreign(kind: str):
    """``comm.register`` on a tensor whose memory torch does not own; returns whether it was
    registered, whether the owner still sees the tensor's writes, and the warnings."""
    import tempfile
    import warnings

    import numpy as np

    far.registered._warned.clear()  # the rank process is reused across cases: warn once per case
    comm = far.Communicator()
    if kind == "numpy":
        owner = np.zeros(1024, dtype=np.float32)
        t = torch.from_numpy(owner)
    elif kind == "dlpack":
        owner = np.zeros(1024, dtype=np.float32)
        t = torch.from_dlpack(owner)
    elif kind == "shared":
        t = owner = torch.zeros(1024).share_memory_()
    else:  # an mmapped file
        path = tempfile.mktemp(prefix="far_foreign_")
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)
        t = torch.from_file(path, shared=True, size=1024)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = comm.register(t)
        again = comm.register(t)
    t.fill_(1.0)
    if kind in ("numpy", "dlpack"):
        seen = bool((torch.from_numpy(owner) == 1).all())
    elif kind == "shared":
        seen = bool((owner == 1).all())
    else:
        seen = bool((torch.from_file(path, shared=True, size=1024) == 1).all())
        os.unlink(path)
    owned = comm.register(torch.zeros(1024))  # torch's own memory still registers
    comm.close()
    return ok, again, seen, owned, [str(w.message) for w in caught]


def construct_with_small_shm(limited_rank: int):
    """A new Communicator while ``limited_rank``'s file-size limit (1 MiB) is below what the
    copying path's segment needs. Returns (error type name, message, seconds, segments and
    mappings this construction left)."""
    import resource
    import time

    pids = _group_pids()
    before = set(segments_of(pids) + _our_maps())  # an earlier case's, still alive in this process
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    if dist.get_rank() == limited_rank:  # Python ignores SIGXFSZ: the allocation fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limit[1]))
    t0 = time.monotonic()
    try:
        c = far.Communicator()
        c.close()
        err, msg = None, ""
    except Exception as e:  # noqa: BLE001  (what every rank raises is the result)
        err, msg = type(e).__name__, str(e)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    seconds = time.monotonic() - t0
    dist.barrier()
    return err, msg, seconds, sorted(set(segments_of(pids) + _our_maps()) - before)
