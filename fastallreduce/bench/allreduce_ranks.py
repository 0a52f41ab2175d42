"""The allreduce benchmark's code on the ranks: what each rank process runs when the driver
(:mod:`.allreduce_harness`) asks it to.

Module-level functions, so that spawned rank processes can unpickle them; what a rank keeps
between the driver's calls (its communicators, groups and the current size's buffers) is one
typed :class:`RankState` per process.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from .allreduce_check import (BACKEND, DEEPSPEED, DIST_IMPLS, DTYPES, INPLACE_IMPLS, REFERENCE, REGISTERED,
                              count_wrong, expected_period, make_input, tile)
from .allreduce_report import human_size


@dataclass
class Buffers:
    """One size's input, work buffer and expected result, reused by every implementation."""
    key: tuple
    inp: torch.Tensor
    work: torch.Tensor
    expected: torch.Tensor
    registered: Optional[torch.Tensor] = None  # the registered implementation's work buffer


@dataclass
class RankState:
    """What this rank holds between the driver's calls."""
    comms: dict = field(default_factory=dict)    # implementation -> fastallreduce.Communicator
    groups: dict = field(default_factory=dict)   # implementation in DIST_IMPLS -> its process group
    bufs: Optional[Buffers] = None
    deepspeed: bool = False


_RANK = RankState()


def _harness_group() -> dist.ProcessGroup:
    """The gloo group over all ranks: gloo's reference and the barriers between measurements.

    The default group when it is gloo, else one made once (collectively) and reused: the
    harness's own synchronisation then never depends on the backend being measured.
    """
    from ..backend import world_group

    return world_group("gloo")


def _dist_group(impl: str) -> dist.ProcessGroup:
    """The process group ``impl`` (gloo or the fastallreduce backend) all_reduces on; collective on first use."""
    from ..backend import BACKEND_NAME, world_group

    g = _RANK.groups.get(impl)
    if g is None:
        g = _harness_group() if impl == REFERENCE else world_group(BACKEND_NAME)
        _RANK.groups[impl] = g
    return g


def _deepspeed_setup(dtype: torch.dtype, op: str) -> None:
    """Initialises DeepSpeed's CPU shared-memory allreduce over the default group's ranks (all on
    this host). Raises NotImplementedError where it cannot run this dtype/op or is not installed."""
    if op != "sum" or dtype not in (torch.float32, torch.bfloat16):
        raise NotImplementedError("DeepSpeed's CPU allreduce supports float32/bfloat16 sum only")
    if _RANK.deepspeed:
        return
    try:
        import deepspeed
    except ImportError as e:
        raise NotImplementedError(f"deepspeed is not installed ({e})") from None
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_SIZE=str(world), RANK=str(rank), WORLD_SIZE=str(world))
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    _RANK.deepspeed = True


def _dist_allreduce(t: torch.Tensor, op: str, impl: str) -> None:
    """``torch.distributed.all_reduce(t)`` in place on ``impl``'s group (see :func:`_dist_group`),
    or DeepSpeed's allreduce for :data:`DEEPSPEED`."""
    if impl == DEEPSPEED:
        torch.ops.deepspeed.inference_all_reduce_(t)
        return
    group = _RANK.groups[impl]
    if op == "avg" and impl == REFERENCE:  # gloo has no AVG: sum, then divide (part of the timed work)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        t.div_(dist.get_world_size())
        return
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op.upper()), group=group)


def setup(impls: list[str], dtype_name: str, op: str, hosts: int = 0) -> dict[str, Optional[str]]:
    """Creates the communicators and tries a tiny allreduce with each implementation.

    ``hosts`` > 0 splits the ranks into that many simulated hosts (consecutive blocks) for
    fastallreduce's topology, so that the hierarchical path can be measured on one machine.
    Returns impl -> None when usable, or the reason it is not (NotImplementedError, ValueError...).
    Every rank runs it with the same ``impls``: the groups it makes are made in the same order.
    """
    import fastallreduce as far

    dtype = DTYPES[dtype_name]
    rank, world = dist.get_rank(), dist.get_world_size()
    _harness_group()  # first, so that it exists even with --no-reference (barriers)
    status: dict[str, Optional[str]] = {}
    for name in impls:
        x = make_input(rank, 2 * world + 1, dtype, op)
        try:
            if name in DIST_IMPLS:
                _dist_group(name)
                _dist_allreduce(x, op, name)
            elif name == DEEPSPEED:
                _deepspeed_setup(dtype, op)
                _dist_allreduce(x, op, name)
            else:
                c = _RANK.comms.get(name)
                if c is None:
                    host_id = f"simulated-host-{rank * hosts // world}" if hosts else None
                    c = far.Communicator(algorithm="auto" if name == REGISTERED else name, host_id=host_id)
                    _RANK.comms[name] = c
                if name == REGISTERED:
                    x = c.empty(x.numel(), dtype=dtype).copy_(x)
                c.allreduce(x, op=op)
            bad = count_wrong(x, tile(expected_period(world, dtype, op), x.numel()), op)
            status[name] = None if bad == 0 else f"probe gave {bad} wrong elements"
        except (NotImplementedError, ValueError, TypeError, RuntimeError) as e:
            status[name] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            _RANK.comms.pop(name, None)
    return status


def topology() -> dict[str, Any]:
    """What this rank's ``auto`` Communicator learned about the ranks' hosts, and what ``auto``
    picks per size (empty when :func:`setup` made no ``auto`` Communicator)."""
    c = _RANK.comms.get("auto")
    if c is None:
        return {}
    sizes = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20]
    return {"hosts": c.num_hosts, "host_of_rank": c.host_of_rank, "local_ranks": c.local_ranks,
            "auto_choice": {human_size(s): c.choose(s) for s in sizes}, "config": c.config}


def _buffers(count: int, dtype: torch.dtype, op: str) -> Buffers:
    key = (count, dtype, op)
    b = _RANK.bufs
    if b is None or b.key != key:
        _RANK.bufs = None  # free the previous size's buffers before allocating the next
        rank, world = dist.get_rank(), dist.get_world_size()
        inp = make_input(rank, count, dtype, op)
        work = torch.empty_like(inp)
        work.copy_(inp)  # first touch outside the timed region
        b = Buffers(key, inp, work, tile(expected_period(world, dtype, op), count))
        comm = _RANK.comms.get(REGISTERED)
        if comm is not None:
            b.registered = comm.empty(count, dtype=dtype).copy_(inp)
        _RANK.bufs = b
    return b


def measure(impl: str, count: int, dtype_name: str, op: str, warmup: int, iters: int,
            check_every: bool) -> dict[str, Any]:
    """Times ``iters`` out-of-place and ``iters`` in-place allreduces of ``count`` elements on this rank."""
    dtype = DTYPES[dtype_name]
    b = _buffers(count, dtype, op)
    inp, work, expected = b.inp, b.work, b.expected
    if impl == REGISTERED:
        work = b.registered
    comm = None if impl in INPLACE_IMPLS else _RANK.comms[impl]
    result: dict[str, Any] = {}
    for mode in ("oop", "ip"):
        def once() -> float:
            if mode == "ip":
                work.copy_(inp)  # fresh input, outside the timed region
            t0 = time.perf_counter()
            if comm is None:
                if mode == "oop":  # no out-of-place all_reduce: copy, then reduce
                    work.copy_(inp)
                _dist_allreduce(work, op, impl)
            elif mode == "oop":
                comm.allreduce(inp, op=op, out=work)
            else:
                comm.allreduce(work, op=op)
            return time.perf_counter() - t0

        wrong = 0
        for _ in range(warmup):
            once()
            if check_every:
                wrong += count_wrong(work, expected, op)
        dist.barrier(group=_harness_group())
        times = []
        for _ in range(iters):
            times.append(once())
            if check_every:
                wrong += count_wrong(work, expected, op)
        if not check_every:
            once()
            wrong += count_wrong(work, expected, op)
        if mode == "oop" and comm is not None and not torch.equal(inp, make_input(dist.get_rank(), count, dtype, op)):
            wrong += count_wrong(inp, make_input(dist.get_rank(), count, dtype, op), "sum")
        result[mode] = {"times": times, "wrong": wrong}
        if comm is not None:
            result[mode]["algorithm"] = comm.last_algorithm
    return result


def paired(count: int, dtype_name: str, op: str, iters: int, other: str = BACKEND) -> dict[str, list[float]]:
    """``other`` against the Communicator (auto, ordinary tensors), in place, call for call: each
    iteration times one ``comm.allreduce`` and one call of ``other`` (``dist.all_reduce`` on the
    backend group, or the Communicator on its registered buffer), in alternating order, each on a
    fresh copy of the input, so that drift in a shared machine's load and cache state hit both
    alike."""
    b = _buffers(count, DTYPES[dtype_name], op)
    inp, work = b.inp, b.work
    comm = _RANK.comms["auto"]
    run_other: Callable[[], Any]
    if other == REGISTERED:
        reg, reg_comm = b.registered, _RANK.comms[REGISTERED]
        run_other = lambda: reg_comm.allreduce(reg, op=op)  # noqa: E731
    else:
        reg, run_other = work, lambda: _dist_allreduce(work, op, BACKEND)  # noqa: E731
    calls = {"auto": (work, lambda: comm.allreduce(work, op=op)), other: (reg, run_other)}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for i in range(iters):
        dist.barrier(group=_harness_group())
        for name in (("auto", other) if i % 2 == 0 else (other, "auto")):
            buf, call = calls[name]
            buf.copy_(inp)
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return times


def teardown() -> None:
    """Closes this rank's communicators and forgets its buffers."""
    for c in _RANK.comms.values():
        try:
            c.close()
        except Exception:  # noqa: BLE001 - teardown is best effort
            pass
    _RANK.comms.clear()
    # The groups stay alive (fastallreduce.backend.world_group caches them): making them again
    # would be another collective set-up for nothing.
    _RANK.groups.clear()
    _RANK.bufs = None
