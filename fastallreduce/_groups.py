"""The process groups the engine makes for its own traffic (a Gloo transport per communicator, an
NCCL group at the first CUDA call) and the timeouts they are made with: one place for the
Communicator and the torch.distributed backend alike."""
from __future__ import annotations

import threading
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist

from . import _C

#: torch.distributed's default timeout for gloo, used where a group's own cannot be read.
DEFAULT_TIMEOUT = timedelta(minutes=30)
#: The engine's limit (steady_clock arithmetic stays far from overflow).
MAX_TIMEOUT = timedelta(days=366)


def timeout_ms(timeout: timedelta) -> int:
    """``timeout`` in whole milliseconds, capped at :data:`MAX_TIMEOUT`."""
    return int(min(timeout, MAX_TIMEOUT) / timedelta(milliseconds=1))


def group_timeout(group: dist.ProcessGroup) -> timedelta:
    """The timeout ``group`` was made with (init_process_group's or new_group's ``timeout=``).

    torch keeps it in the group's backends' options (a ProcessGroup has no ``options`` of its own
    since torch 2.x): a communicator on its defaults is bounded by what the user gave torch, never
    silently by the 30 min fallback.
    """
    for device in ("cpu", "cuda"):
        try:
            return group._get_backend(torch.device(device)).options._timeout  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - no backend for this device in the group: try the next
            continue
    warnings.warn(f"fastallreduce: cannot read the group's timeout; using {DEFAULT_TIMEOUT}", stacklevel=3)
    return DEFAULT_TIMEOUT


def gloo_group(store: dist.Store, rank: int, size: int, timeout_ms: int) -> dist.ProcessGroupGloo:
    """The engine's point-to-point transport over ``store`` (private to one communicator)."""
    # The engine's transport: a Gloo backend made directly, not through dist.new_group (which
    # names groups from a per-process counter that diverges when some ranks make subgroups).
    return dist.ProcessGroupGloo(store, rank, size, timedelta(milliseconds=timeout_ms))


# ProcessGroupNCCL reads TORCH_NCCL_ASYNC_ERROR_HANDLING in its constructor. 2 (CleanUpOnly):
# on a timeout its watchdog aborts the group's NCCL communicator but leaves the process alive
# (torch's default ends it), so our next call raises CommTimeoutError instead.
_NCCL_ERROR_HANDLING = "2"
_env_lock = threading.Lock()


def nccl_group(store: dist.Store, rank: int, size: int, timeout_ms: int, name: str = "fastallreduce") -> dist.ProcessGroup:
    """The engine's NCCL group over ``store``, made at a communicator's first CUDA call."""
    # The engine's CUDA path: a ProcessGroupNCCL made directly on its own PrefixStore, as the Gloo
    # transport is, at the communicator's first CUDA call (collective: every rank makes that call).
    # Options as torch's own groups get them (distributed_c10d._new_process_group_helper).
    opts = dist.ProcessGroupNCCL.Options()
    opts.is_high_priority_stream = False
    opts._timeout = timedelta(milliseconds=timeout_ms)
    opts.group_name = name  # names the group in torch's NCCL logs and flight recorder
    # TORCH_NCCL_ASYNC_ERROR_HANDLING=2 (clean up only) for this group alone: on a timeout or an
    # NCCL error torch's watchdog aborts the group instead of ending the process, and the engine
    # raises. ProcessGroupNCCL reads it once, in its constructor. It is set and restored through
    # torch's own environment accessors (torch's lock), never os.environ: torch's threads read
    # their settings concurrently, and Python's putenv does not take torch's lock.
    key = "TORCH_NCCL_ASYNC_ERROR_HANDLING"
    with _env_lock:
        before = _C._get_torch_env(key)
        _C._set_torch_env(key, _NCCL_ERROR_HANDLING)
        try:
            return dist.ProcessGroupNCCL(store, rank, size, opts)
        finally:  # only this group is made with our setting; others keep the user's
            _C._set_torch_env(key, before)
