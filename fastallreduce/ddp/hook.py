"""The DDP communication hook's state and its per-bucket path (see :mod:`fastallreduce.ddp`).

This module deliberately does not use ``from __future__ import annotations``: DDP compares the
hook's return annotation with ``torch.futures.Future[torch.Tensor]`` by identity.
"""
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from ..communicator import Communicator
from .._C import ClosedError, CommError

log = logging.getLogger("fastallreduce")

_COMPRESSION = {None: None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Left out when a state is pickled: they belong to this process (see HookState.__getstate__).
_PROCESS_LOCAL = ("_comm", "process_group", "_lock", "_comm_lock", "_wire", "_refused", "_registered", "_mark")

#: Why a bucket stays on the copying path (keys of ``HookState.zero_copy_fallbacks``).
ZERO_COPY_FALLBACKS = {
    "disabled": "HookState(zero_copy=False)",
    "device": "the bucket is not on the CPU (CUDA buckets run on NCCL)",
    "layout": "the bucket is not a dense contiguous tensor that owns its whole storage",
    "no_local_peers": "no other rank shares this host's memory, or the registration table is full",
    "shm_full": "/dev/shm cannot hold the bucket's registration (a small or full /dev/shm)",
}


class HookState:
    """State of the fastallreduce DDP hooks.

    Args:
        process_group: the group DDP uses (None: the default group). Creating the state is a
            collective over it: every rank must create its HookState at the same point.
        algorithm: the Communicator algorithm ("auto" picks per bucket size and topology).
        compression: None, "bf16" or "fp16": cast gradients for the wire and back afterwards.
        communicator: reuse an existing Communicator over the same ranks instead of making one.
        zero_copy: move each CPU bucket into the Communicator's registered memory the first time
            the hook sees it, so that its allreduces copy nothing into shared memory.

    A copy of the state (``copy.deepcopy``, pickling, ``torch.save`` of the DDP model) keeps the
    options and statistics, uses the default process group (as DDP's own copies do; a warning
    says so when the original used another group) and makes its own Communicator with the same
    algorithm at its first use. That construction is a collective, so every rank must use its
    copy; it never happens while unpickling.

    ``stats()`` reports, for the last completed step: bytes reduced, time spent in
    communication (sum over buckets, from hook call to completion), exposed communication: how
    long after the last bucket was handed over (the end of backward) the last reduction
    finished, and the bytes the step's allreduces copied into shared memory (0 once every bucket
    is registered). ``zero_copy_fallbacks`` counts the buckets that stayed on the copying path,
    by reason (:data:`ZERO_COPY_FALLBACKS`).
    """

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None, *, algorithm: str = "auto",
                 compression: Optional[str] = None, communicator: Optional[Communicator] = None,
                 zero_copy: bool = True) -> None:
        if compression not in _COMPRESSION:
            raise ValueError(f"fastallreduce: compression must be one of None, 'bf16', 'fp16'; got {compression!r}")
        self.process_group = process_group
        self.compression = _COMPRESSION[compression]
        self.algorithm = getattr(communicator, "algorithm", algorithm) if communicator is not None else algorithm
        self._comm: Optional[Communicator] = (communicator if communicator is not None
                                              else Communicator(process_group, algorithm))
        self._comm_lock = threading.Lock()
        self._lock = threading.Lock()
        self._wire: Dict[int, torch.Tensor] = {}  # bucket index -> idle 16-bit wire copy (compression)
        self.zero_copy = bool(zero_copy)
        self.zero_copy_fallbacks: Dict[str, int] = {}
        self._refused: set = set()  # buckets (device, address, size) that stay on the copying path
        self._registered: set = set()  # buckets (address, size) known to be in registered memory
        self._reset_step()
        self._last: Dict[str, float] = {"bytes": 0, "buckets": 0, "comm_time_s": 0.0, "exposed_s": 0.0,
                                        "bytes_copied_in": 0}
        self.steps = 0
        self.buffer_syncs = 0  # buffer broadcasts run on this state's Communicator (register(buffers=True))

    def _reset_step(self) -> None:
        # The open step: the communicator's accounted totals when it began (None: no step open),
        # its buckets and bytes, when its last bucket was handed over, and what CUDA buckets
        # (which the engine does not account) reported from their callbacks.
        self._mark: Optional[tuple] = None
        self._buckets = 0
        self._bytes = 0
        self._last_call_ns: Optional[int] = None
        self._cuda_done = 0
        self._cuda_busy_ns = 0
        self._cuda_last_ns = 0

    def _begin(self, comm: Communicator, nbytes: int, first: bool, last: bool) -> None:
        """Books a bucket handed to the hook (on the caller's thread, no engine call but at a
        step's first bucket)."""
        with self._lock:
            if first:  # DDP hands buckets over in index order: 0 opens a step
                self._close_step(comm)
                self._reset_step()
                self._mark = comm.accounted()
            self._buckets += 1
            self._bytes += nbytes
            if last:
                self._last_call_ns = time.monotonic_ns()

    def _cuda_finished(self, t0_ns: int) -> None:
        now = time.monotonic_ns()
        with self._lock:
            self._cuda_done += 1
            self._cuda_busy_ns += now - t0_ns
            self._cuda_last_ns = max(self._cuda_last_ns, now)

    def _close_step(self, comm: Optional[Communicator]) -> None:
        """The open step's statistics, once its last bucket was handed over and every bucket's
        reduction completed (under ``_lock``)."""
        if self._mark is None or self._last_call_ns is None or comm is None:
            return
        ops, nbytes, busy_ns, copied, last_done_ns = comm.accounted()
        if ops - self._mark[0] + self._cuda_done < self._buckets:
            return  # still in flight
        done_ns = max(last_done_ns, self._cuda_last_ns)
        self._last = {"bytes": self._bytes, "buckets": self._buckets,
                      "comm_time_s": (busy_ns - self._mark[2] + self._cuda_busy_ns) / 1e9,
                      "exposed_s": max(0, done_ns - self._last_call_ns) / 1e9,
                      "bytes_copied_in": copied - self._mark[3]}
        self.steps += 1
        self._mark = None

    def _fallback(self, reason: str) -> None:
        self.zero_copy_fallbacks[reason] = self.zero_copy_fallbacks.get(reason, 0) + 1

    def stats(self) -> Dict[str, float]:
        """Statistics of the last completed step: bytes, buckets, comm_time_s, exposed_s,
        bytes_copied_in."""
        with self._lock:
            self._close_step(self._comm)
            return dict(self._last)

    @property
    def comm(self) -> Communicator:
        """The state's Communicator. A copy makes its own at the first use (a collective)."""
        comm = self._comm
        if comm is None:
            with self._comm_lock:
                if self._comm is None:
                    self._comm = Communicator(self.process_group, self.algorithm)
                comm = self._comm
        return comm

    def __getstate__(self) -> Dict[str, Any]:
        # The Communicator, group and locks belong to this process (torch's PowerSGDState leaves
        # its group out the same way); the copy makes its own Communicator when first used.
        state = {k: v for k, v in self.__dict__.items() if k not in _PROCESS_LOCAL}
        state["_default_group"] = self.process_group in (None, dist.GroupMember.WORLD)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        default_group = state.pop("_default_group", True)
        self.__dict__.update(state)
        self.process_group = None
        self._comm = None  # never made here: construction is a collective
        self._comm_lock = threading.Lock()
        self._lock = threading.Lock()
        self._wire = {}
        self.__dict__.setdefault("zero_copy", True)
        self.__dict__.setdefault("zero_copy_fallbacks", {})
        self._refused = set()
        self._registered = set()
        self._reset_step()
        if not default_group:
            log.warning("fastallreduce: a copied HookState uses the default process group; set its "
                        "process_group before its first use to keep another group")


def allreduce_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Averages the bucket over ``state``'s group with fastallreduce, asynchronously.

    The returned Future holds the averaged gradients (sum / group size), same shape and dtype as
    ``bucket.buffer()``. With compression, each rank's share (the buffer divided by the group
    size, in its own precision) is cast for the wire and summed, then cast back into the buffer:
    the sum cannot overflow where the average fits. (torch's fp16_compress_hook casts first, then
    divides: a gradient over float16's range is inf there even where its average fits.)
    """
    buf = bucket.buffer()
    if buf.is_sparse:
        raise RuntimeError("fastallreduce.ddp.allreduce_hook does not support sparse gradients")
    comm = state.comm
    cpu = buf.device.type == "cpu"
    if state.compression is None:
        _move_to_registered(state, comm, buf)
    state._begin(comm, buf.numel() * buf.element_size(), bucket.index() == 0, bucket.is_last())
    t0_ns = 0 if cpu else time.monotonic_ns()
    if state.compression is not None and buf.dtype != state.compression:
        # The wire copy is reused across steps; it is taken out while in flight, so a call that
        # finds none (first step, or the same bucket index twice at once) makes a new one.
        index = bucket.index()
        wire = state._wire.pop(index, None)
        if wire is None or wire.shape != buf.shape or wire.device != buf.device:
            wire = (comm.empty(buf.shape, dtype=state.compression) if state.zero_copy and cpu
                    else torch.empty(buf.shape, dtype=state.compression, device=buf.device))
        torch.div(buf, comm.size, out=wire)  # divided in the buffer's precision, rounded once
        fut = comm.allreduce(wire, op="sum", async_op=True, account=True)

        def decompress(f: torch.futures.Future) -> torch.Tensor:
            try:
                buf.copy_(f.value())
                state._wire[index] = wire
                return buf
            finally:
                if not cpu:
                    state._cuda_finished(t0_ns)

        return fut.then(decompress)
    fut = comm.allreduce(buf, op="avg", async_op=True, account=True)
    if cpu:
        return fut  # the engine keeps the statistics: no callback on its worker thread
    # The engine does not account CUDA ops (they complete on the GPU): timed by the callback.

    def done(f: torch.futures.Future) -> torch.Tensor:
        try:
            return f.value()
        finally:
            state._cuda_finished(t0_ns)

    return fut.then(done)


def _move_to_registered(state: HookState, comm: Communicator, buf: torch.Tensor) -> None:
    """Moves a bucket into registered memory the first time the hook sees it (see the module
    docstring); a bucket that cannot move is counted in ``state.zero_copy_fallbacks`` once.
    The decision is cached per bucket (its address and size): one engine call in its first step."""
    ptr = buf.data_ptr()
    if (ptr, buf.numel()) in state._registered:
        return
    refused = state._refused
    key = (buf.device.type, ptr, buf.numel())
    if key in refused:  # tried once: not again every step
        return
    if comm.is_registered(buf):
        state._registered.add((ptr, buf.numel()))
        return
    reason = None
    if not state.zero_copy:
        reason = "disabled"
    elif buf.device.type != "cpu":
        reason = "device"
    elif (not buf.is_contiguous() or buf.storage_offset() != 0
          or buf.untyped_storage().nbytes() != buf.numel() * buf.element_size()):
        reason = "layout"  # the storage holds more than the bucket: moving it could move others' data
    else:
        try:
            if not comm.register(buf):
                reason = "no_local_peers"
        except ClosedError:
            raise
        except CommError as e:  # this rank only: the engine copies unless every rank's input is registered
            log.debug("fastallreduce: bucket of %d bytes stays on the copying path: %s", buf.nbytes, e)
            reason = "shm_full"
    if reason is not None:
        refused.add(key)
        state._fallback(reason)
