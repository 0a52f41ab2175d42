"""Registration of the hook on a DDP model (and on its copies: deepcopy, torch.save/load), and
DDP's buffer broadcast routed through the hook's Communicator."""
from typing import Any, Callable, Dict, List, Optional

import torch

from .hook import HookState, allreduce_hook


class _BufferBroadcast:
    """DDP's buffer broadcast (before each forward, from the authoritative rank: 0, or under Join
    the rank DDP agreed on) as one byte-wise broadcast on the hook's Communicator instead of a
    Gloo broadcast per dtype on DDP's group. Buffers that are not contiguous CPU tensors take
    DDP's own path."""

    def __init__(self, state: HookState, ddp_broadcast) -> None:
        self.state = state
        self.ddp_broadcast = ddp_broadcast
        self.flat: Optional[torch.Tensor] = None

    def __call__(self, tensors: List[torch.Tensor], buffer_size: int, authoritative_rank: int = 0) -> None:
        if not tensors or any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
            return self.ddp_broadcast(tensors, buffer_size, authoritative_rank)
        views = [t.detach().reshape(-1).view(torch.uint8) for t in tensors]
        n = sum(v.numel() for v in views)
        if self.flat is None or self.flat.numel() != n:
            self.flat = torch.empty(n, dtype=torch.uint8)
        comm = self.state.comm
        if comm.rank == authoritative_rank:
            torch.cat(views, out=self.flat)
        comm.broadcast(self.flat, src=authoritative_rank)
        if comm.rank != authoritative_rank:
            offset = 0
            for v in views:
                v.copy_(self.flat[offset:offset + v.numel()])
                offset += v.numel()
        self.state.buffer_syncs += 1

    def __getstate__(self) -> Dict[str, Any]:
        return {"state": self.state, "ddp_broadcast": self.ddp_broadcast, "flat": None}


def _route_buffers(ddp_model: torch.nn.parallel.DistributedDataParallel, state: HookState) -> None:
    # DDP broadcasts its buffers through this one method (only buffers: parameters are synced
    # once, at construction); replacing it on the instance keeps DDP's choice of source rank.
    # A torch without it keeps DDP's own broadcast (state.buffer_syncs stays 0).
    ddp_broadcast = getattr(ddp_model, "_distributed_broadcast_coalesced", None)
    if ddp_broadcast is not None:
        ddp_model._distributed_broadcast_coalesced = _BufferBroadcast(state, ddp_broadcast)


class _Reattach:
    """Forward pre-hook that puts the comm hook back on a copy of the DDP model.

    DDP rebuilds its reducer without any comm hook when it is unpickled (deepcopy, torch.load);
    this registers the copied state and hook on the copy's reducer before its first forward, so
    before any of its backward passes. On the original it does nothing.
    """

    def __init__(self, state: HookState, hook: Callable) -> None:
        self.state = state
        self.hook = hook
        self.registered = True  # on the reducer of the model it belongs to
        self.handle: Any = None

    def __call__(self, ddp_model: torch.nn.parallel.DistributedDataParallel, args: Any) -> None:
        if not self.registered:
            self.registered = True
            _forget_hook(ddp_model, self.state)
            ddp_model.register_comm_hook(self.state, self.hook)

    def __getstate__(self) -> Dict[str, Any]:
        return dict(self.__dict__, registered=False)


def _forget_hook(ddp_model: torch.nn.parallel.DistributedDataParallel, state: HookState) -> None:
    # DDP's list of (hook, state) pairs, copied with the model, would otherwise hold the pair twice.
    hooks = getattr(ddp_model, "_comm_hooks", None)
    if hooks is not None:
        hooks[:] = [(h, s) for h, s in hooks if s is not state]


def install(ddp_model: torch.nn.parallel.DistributedDataParallel, state: HookState, hook: Callable,
             buffers: bool) -> None:
    """Registers ``hook`` with ``state`` on ``ddp_model`` (and on its later copies)."""
    stale = getattr(ddp_model, "_fastallreduce_hook", None)
    if stale is not None and not stale.registered:
        # A copy whose copied hook is not on its reducer yet: this registration replaces it.
        stale.handle.remove()
        _forget_hook(ddp_model, stale.state)
        if isinstance(ddp_model.__dict__.get("_distributed_broadcast_coalesced"), _BufferBroadcast):
            del ddp_model._distributed_broadcast_coalesced
    ddp_model.register_comm_hook(state, hook)
    if buffers:
        _route_buffers(ddp_model, state)
    reattach = _Reattach(state, hook)
    reattach.handle = ddp_model.register_forward_pre_hook(reattach)
    ddp_model._fastallreduce_hook = reattach


def register(ddp_model: torch.nn.parallel.DistributedDataParallel, *, buffers: bool = True,
             **options: Any) -> HookState:
    """Registers :func:`allreduce_hook` on ``ddp_model`` over the group DDP itself uses.

    ``options`` are :class:`HookState`'s keyword arguments. With ``buffers`` (the default), the
    module buffers (BatchNorm running statistics) that DDP broadcasts before every forward also
    go through the hook's Communicator (same source rank as DDP's, Join included) instead of
    DDP's group. Returns the state (for ``stats()``). Collective: call it on every rank.

    A copy of ``ddp_model`` (``copy.deepcopy``, ``torch.save`` / ``torch.load``) keeps the hook,
    with a copy of the state (see :class:`HookState`); registering again on a copy before its
    first forward replaces the copied hook.
    """
    state = HookState(ddp_model.process_group, **options)
    install(ddp_model, state, allreduce_hook, buffers)
    return state
