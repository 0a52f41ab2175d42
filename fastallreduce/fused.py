"""The SGD update fused into the DDP communication hook.

    opt = fastallreduce.optim.SGD(ddp_model.parameters(), lr=0.1, momentum=0.9)
    state = fastallreduce.ddp.register_fused_optimizer(ddp_model, opt)
    loss.backward()   # each bucket is averaged, then its parameters updated, on the comm thread
    opt.step()        # updates only what the hook did not

``optimizer.step`` is not replaced: the optimizer holds a weak reference to its
:class:`FusedSGDState`, and :meth:`fastallreduce.optim.SGD.step` asks it which parameters the hook
already updated. So LR schedulers made before or after (they wrap ``optimizer.step``), and the
optimizer's step pre/post hooks, per optimizer and global, work as for any optimizer.

This module deliberately does not use ``from __future__ import annotations``: DDP compares the
hook's return annotation with ``torch.futures.Future[torch.Tensor]`` by identity.
"""
import weakref
from typing import Any, Dict, List, Optional, Set

import torch
import torch.distributed as dist

from .ddp import HookState, _install, allreduce_hook
from .optim import SGD

__all__ = ["FusedSGDState", "fused_sgd_hook", "register_fused_optimizer"]


def _live_state(optimizer: SGD) -> Optional["FusedSGDState"]:
    ref = getattr(optimizer, "_fused_state", None)
    return ref() if ref is not None else None


class FusedSGDState(HookState):
    """State of :func:`fused_sgd_hook`: a :class:`~fastallreduce.ddp.HookState` plus the optimizer
    whose update is applied to each bucket's parameters as soon as that bucket's allreduce
    completes.

    Made by :func:`register_fused_optimizer`; see there for the contract. A copy of the state
    (``copy.deepcopy`` or ``torch.save`` of the DDP model) has no optimizer: the optimizer updates
    the original's parameters, which a copy must never touch. The copy's hook then only averages,
    as :func:`~fastallreduce.ddp.allreduce_hook` does.
    """

    def __init__(self, process_group: Optional[dist.ProcessGroup], optimizer: SGD, **options: Any) -> None:
        if not isinstance(optimizer, SGD):
            raise TypeError("fastallreduce: the fused update needs a fastallreduce.optim.SGD optimizer "
                            f"(got {type(optimizer).__name__}); it is a drop-in for torch.optim.SGD")
        if _live_state(optimizer) is not None:
            raise ValueError("fastallreduce: this optimizer's update is already fused into another DDP model's hook")
        super().__init__(process_group, **options)
        self.optimizer: Optional[SGD] = optimizer
        self._updated: Set[int] = set()  # ids of parameters updated by the hook since the last step()
        self._probes: list = []  # (param, first gradient elements used) to detect later edits
        optimizer._fused_state = weakref.ref(self)  # weak: the optimizer must not keep the DDP state alive

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        state.update(optimizer=None, _updated=set(), _probes=[])  # see the class docstring
        return state

    def _group_index(self, p: torch.Tensor) -> int:
        assert self.optimizer is not None
        for i, g in enumerate(self.optimizer.param_groups):
            if any(p is q for q in g["params"]):
                return i
        raise RuntimeError("fastallreduce: a DDP parameter is not in the fused optimizer's param_groups")

    def _update_bucket(self, optimizer: SGD, params: List[torch.Tensor], grads: List[torch.Tensor]) -> None:
        groups: Dict[int, tuple] = {}
        for p, g in zip(params, grads):
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError("fastallreduce: sparse gradients cannot use the fused update")
            ps, gs = groups.setdefault(self._group_index(p), ([], []))
            ps.append(p)
            gs.append(g)
        with torch.no_grad():
            for gi, (ps, gs) in groups.items():
                optimizer._step_params(optimizer.param_groups[gi], ps, gs)
        with self._lock:
            self._updated.update(id(p) for ps, _ in groups.values() for p in ps)
            for ps, gs in groups.values():
                if gs[0].numel():  # a few elements to tell, at step(), whether p.grad was edited
                    self._probes.append((ps[0], gs[0].reshape(-1)[:8].clone()))

    def _begin_step(self) -> Set[int]:
        """Called by ``optimizer.step()``: the ids of the parameters the hook updated since the
        last step (the step leaves them alone: no double update). Refuses GradScaler and gradients
        changed after the fused update had used them (clipping)."""
        if getattr(self.optimizer, "found_inf", None) is not None:
            raise RuntimeError("fastallreduce: GradScaler cannot be combined with the update fused into the DDP hook: "
                               "it must see every gradient before any parameter is updated")
        with self._lock:
            probes, self._probes = self._probes, []
            done, self._updated = self._updated, set()
        for p, before in probes:
            if p.grad is not None and not torch.equal(p.grad.reshape(-1)[: before.numel()], before):
                raise RuntimeError("fastallreduce: gradients changed after the fused update had used them "
                                   "(gradient clipping? GradScaler.unscale_?); they need every gradient before any "
                                   "update, so they cannot be combined with register_fused_optimizer")
        return done


def fused_sgd_hook(state: FusedSGDState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Averages the bucket like :func:`~fastallreduce.ddp.allreduce_hook`, then updates the
    bucket's parameters with ``state.optimizer`` in the Future's continuation (torch's
    ``_hook_then_optimizer`` pattern), so one bucket's update overlaps the next bucket's
    communication: on the communicator's thread for CPU buckets; for CUDA buckets on the stream
    torch gives a CUDA Future's callback, which waits for the allreduce. The Future holds the
    averaged gradients.

    On a rank that has joined (Join's shadow passes, outside any backward), or with no optimizer
    (a copy of the state), it only communicates.
    """
    in_backward = torch._C._current_graph_task_id() != -1
    fut = allreduce_hook(state, bucket)
    optimizer = state.optimizer
    if not in_backward or optimizer is None:
        return fut
    params = bucket.parameters()

    def update(f: torch.futures.Future) -> torch.Tensor:
        buf = f.value()
        state._update_bucket(optimizer, params, bucket.gradients())
        return buf

    return fut.then(update)


def register_fused_optimizer(ddp_model: torch.nn.parallel.DistributedDataParallel, optimizer: SGD, *,
                             buffers: bool = True, **options: Any) -> FusedSGDState:
    """Fuses ``optimizer``'s update into the DDP communication hook.

    Each bucket's parameters are updated (reading the lr from ``optimizer.param_groups`` every
    time, so LR schedules apply) as soon as the bucket's averaged gradients arrive.

    Contract:
      * keep calling ``optimizer.step()`` after ``backward()``: it does not update again what the
        hook updated, it updates any parameter the hook did not see; its step pre/post hooks run,
        and LR schedulers made before or after this call work;
      * ``no_sync()`` accumulation steps do not update (DDP runs no hook then);
      * a rank that has joined (Join) does not update;
      * GradScaler, gradient clipping and sparse gradients need all gradients before any update
        and raise a RuntimeError;
      * one optimizer is fused into one DDP model (a second registration raises ValueError);
      * a copy of ``ddp_model`` (deepcopy, torch.save) keeps the hook but not the optimizer: it
        averages only, so train it with an optimizer of its own, or fuse one with
        ``register_fused_optimizer(copy, its_optimizer)`` before the copy's first forward.

    ``optimizer`` must be a :class:`fastallreduce.optim.SGD`; ``buffers`` and ``options`` as in
    :func:`fastallreduce.ddp.register`. Collective: call it on every rank.
    """
    state = FusedSGDState(ddp_model.process_group, optimizer, **options)
    _install(ddp_model, state, fused_sgd_hook, buffers)
    return state
