"""fastallreduce as a torch.distributed backend.

``import fastallreduce`` registers a backend named ``"fastallreduce"``, so that changing only the
backend string puts every ``torch.distributed.all_reduce`` (DDP's default reducer, FSDP on CPU, a
user's own calls) on the fastallreduce engine::

    import fastallreduce  # noqa: F401  (registers the backend)
    dist.init_process_group("fastallreduce")                      # torchrun / env://
    dist.init_process_group("cpu:fastallreduce,cuda:nccl", ...)   # per-device form

Allreduce of a dense contiguous CPU tensor with SUM, AVG, PRODUCT, MAX or MIN on a dtype the engine
supports runs on the engine (AVG on integer dtypes raises TypeError). When every rank is on one
host, broadcast, all_gather (list, into_tensor, single) and reduce_scatter (list, tensor, single)
of such tensors run on the engine's shared memory as well. Everything else -- gather, scatter,
reduce, all_to_all, point-to-point, monitored_barrier, the coalesced forms, and calls on other
dtypes / ops / layouts -- goes to an internal Gloo backend created from the same store, so
nothing a torch user calls is missing and those calls behave (and fail) exactly as on Gloo. CUDA
tensors go, after the same header check, to an NCCL group over the same ranks that the engine makes
at the first CUDA call (so ``"fastallreduce"`` alone serves a GPU job; AVG on integer dtypes still
raises TypeError). ``barrier`` waits for this
rank's delegated work, then runs a 1-byte engine collective (FIFO after queued allreduces); unlike
Gloo's barrier it never re-raises an earlier op's error.

Environment: ``FASTALLREDUCE_BACKEND_ALGORITHM`` (``auto``, ``ring``, ``halving_doubling``) picks
the engine algorithm of every allreduce (default ``auto``: the cost model).
"""
from __future__ import annotations

import atexit
from datetime import timedelta

import torch
import torch.distributed as dist

from . import _C, _groups, knobs

#: The name to pass to ``torch.distributed.init_process_group``.
BACKEND_NAME = "fastallreduce"
#: Devices the backend is registered for (CUDA tensors go to an NCCL group made at the first CUDA
#: call, so "cuda" needs only torch's NCCL, not our CUDA kernels).
DEVICES = ["cpu"] + (["cuda"] if dist.is_available() and dist.is_nccl_available() else [])



def create_backend(store: dist.Store, rank: int, size: int, timeout: timedelta) -> "_C.FastAllreduceBackend":
    """The creator torch.distributed calls (collectively) for each group on this backend.

    ``store`` is already private to the group and device (torch prefixes it). The C++ backend
    makes its engine and the Gloo backend it delegates to from it; an invalid
    ``FASTALLREDUCE_BACKEND_ALGORITHM`` on any rank makes every rank raise ValueError.
    """
    try:  # an invalid value is published, so that every rank raises
        name, error = str(knobs.value("FASTALLREDUCE_BACKEND_ALGORITHM")), ""
    except ValueError as e:
        name, error = "auto", str(e)
    nccl = _groups.nccl_group if dist.is_nccl_available() else None  # made at the first CUDA call, if any
    return _C.FastAllreduceBackend(store, rank, size, _groups.timeout_ms(timeout), name, _groups.gloo_group,
                                   local_error=error, make_nccl=nccl)


def register() -> None:
    """Registers the backend with torch.distributed (idempotent; ``import fastallreduce`` calls it)."""
    if BACKEND_NAME.upper() in dist.Backend._plugins:  # type: ignore[attr-defined]
        return
    dist.Backend.register_backend(BACKEND_NAME, create_backend, devices=DEVICES)


def get_backend(group: dist.ProcessGroup | None = None,
                device: str = "cpu") -> "_C.FastAllreduceBackend":
    """The fastallreduce backend object of ``group`` (default: the default group) for ``device``.

    Exposes ``engine_ops`` / ``delegated_ops`` counters (how many collectives ran where).
    """
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    b = pg._get_backend(torch.device(device))
    if not isinstance(b, _C.FastAllreduceBackend):
        raise ValueError(f"fastallreduce: the {device} backend of this group is {type(b).__name__}, not fastallreduce")
    return b


# backend name -> (the default group it was made under, the group over all its ranks)
_world_groups: dict[str, tuple[dist.ProcessGroup, dist.ProcessGroup]] = {}


def world_group(backend: str = BACKEND_NAME) -> dist.ProcessGroup:
    """A group over every rank of the default group whose backend is ``backend``.

    The default group itself when it already uses ``backend``; otherwise a group made once per
    process with ``dist.new_group(backend=backend)`` and reused by later calls (a new one after
    the default group is destroyed and re-initialised). The first call is therefore collective:
    every rank must make it, in the same order relative to other group creations.
    """
    world = dist.group.WORLD
    if world is None:
        raise RuntimeError("fastallreduce: world_group() needs torch.distributed.init_process_group() first")
    if dist.get_backend(world) == backend:
        return world
    cached = _world_groups.get(backend)
    if cached is None or cached[0] is not world:
        cached = (world, dist.new_group(backend=backend))
        _world_groups[backend] = cached
    return cached[1]


@atexit.register
def _drain_at_exit() -> None:
    # Finish queued allreduces and stop the engine threads of groups the program never destroyed,
    # before interpreter teardown (registered after torch's own handlers, so it runs first).
    try:
        groups = list(dist.distributed_c10d._world.pg_map)
    except Exception:  # noqa: BLE001 - never raise at exit
        return
    for pg in groups:
        try:
            b = pg._get_backend(torch.device("cpu"))
            if isinstance(b, _C.FastAllreduceBackend):
                b.shutdown()
        except Exception:  # noqa: BLE001
            pass


if dist.is_available():
    register()
