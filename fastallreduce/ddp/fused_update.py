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
import warnings
import weakref
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
import torch.distributed as dist

from ..optim import SGD
from .hook import HookState, allreduce_hook
from .install import install

__all__ = ["FusedSGDState", "fused_sgd_hook", "register_fused_optimizer"]


def _live_state(optimizer: SGD) -> Optional["FusedSGDState"]:
    ref = getattr(optimizer, "_fused_state", None)
    return ref() if ref is not None else None


class FusedSGDState(HookState):
    """State of :func:`fused_sgd_hook`: a :class:`~fastallreduce.ddp.HookState` plus the optimizer
    whose update is applied to each bucket's parameters as soon as that bucket's allreduce
    completes.

    Made by :func:`register_fused_optimizer`; see there for the contract. ``mode`` is
    ``"probe"`` until the first ``step()``, then ``"fused"``, or ``"unfused"`` for good (with
    ``unfused_reason``) when something between backward and ``step()`` needs every gradient
    first. A copy of the state (``copy.deepcopy`` or ``torch.save`` of the DDP model) has no
    optimizer: the optimizer updates the original's parameters, which a copy must never touch.
    The copy's hook then only averages, as :func:`~fastallreduce.ddp.allreduce_hook` does.
    """

    def __init__(self, process_group: Optional[dist.ProcessGroup], optimizer: SGD, **options: Any) -> None:
        if not isinstance(optimizer, SGD):
            raise TypeError("fastallreduce: the fused update needs a fastallreduce.optim.SGD optimizer "
                            f"(got {type(optimizer).__name__}); it is a drop-in for torch.optim.SGD")
        if _live_state(optimizer) is not None:
            raise ValueError("fastallreduce: this optimizer's update is already fused into another DDP model's hook")
        super().__init__(process_group, **options)
        self.optimizer: Optional[SGD] = optimizer
        self.mode = "probe"
        self.unfused_reason: Optional[str] = None
        self._updated: Set[int] = set()  # ids of parameters updated by the hook since the last step()
        self._graph_task = -1  # the backward pass the hook last ran in
        self._backward_pending = False  # a backward ran the hook since the last step()
        self._versions: Dict[int, Tuple[torch.Tensor, int]] = {}  # id(p) -> (p.grad, its version) after backward
        optimizer._fused_state = weakref.ref(self)  # weak: the optimizer must not keep the DDP state alive

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        state.update(optimizer=None, _updated=set(), _versions={}, _backward_pending=False, _graph_task=-1)
        return state

    def _unfuse(self, reason: str) -> None:
        self.mode, self.unfused_reason = "unfused", reason
        warnings.warn(f"fastallreduce: the SGD update stays in optimizer.step(), not fused into the DDP hook: {reason}",
                      stacklevel=3)

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

    def _backward_started(self) -> None:
        """The hook's first bucket of a backward pass: a step() skipped since the previous one
        means something decides per step whether to update (GradScaler skipping an overflowed
        step) or gradients accumulate across synchronised backwards; either needs the unfused
        update. Queues the recording of the gradients' versions for after DDP's own finalisation."""
        if self._backward_pending:
            if self.mode == "probe":
                self._unfuse("optimizer.step() was skipped between two backward passes (gradients accumulated "
                             "without no_sync(), or a step skipped on purpose)")
            elif self.mode == "fused":
                raise RuntimeError("fastallreduce: optimizer.step() was skipped after a backward pass whose update the "
                                   "DDP hook had already applied (GradScaler skipping a step? accumulation without "
                                   "no_sync()?); use the unfused update: register() and a plain optimizer.step()")
        self._backward_pending = True
        if self.mode == "unfused":
            return
        engine = torch.autograd.Variable._execution_engine
        # DDP queues its finalisation (which copies the averaged buckets into .grad) after the
        # hook's first call; a callback queued from a callback runs after it.
        engine.queue_callback(lambda: engine.queue_callback(self._record_versions))

    def _record_versions(self) -> None:
        # Version counters are CPU integers bumped by every in-place change (clip_grad_norm_,
        # GradScaler.unscale_): a check that zeros cannot fool and that never syncs a device.
        assert self.optimizer is not None
        self._versions = {id(p): (p.grad, p.grad._version) for g in self.optimizer.param_groups
                          for p in g["params"] if p.grad is not None}

    def _changed_grads(self, ids: Any) -> bool:
        assert self.optimizer is not None
        for g in self.optimizer.param_groups:
            for p in g["params"]:
                if p.grad is None or id(p) not in ids:
                    continue
                grad, version = self._versions.get(id(p), (None, -1))
                if p.grad is not grad or p.grad._version != version:
                    return True
        return False

    def _begin_step(self, amp: bool = False) -> Set[int]:
        """Called by ``optimizer.step()``: the ids of the parameters the hook updated since the
        last step (the step leaves them alone: no double update). The first step runs unfused and
        decides whether to fuse; a later change of gradients that the hook already used raises.
        ``amp``: GradScaler.step called it (it decides per step whether to update)."""
        with self._lock:
            done, self._updated = self._updated, set()
        pending, self._backward_pending = self._backward_pending, False
        if amp and self.mode == "probe":
            self._unfuse("a GradScaler drives optimizer.step(): it skips steps whose gradients overflowed and "
                         "unscales the others, so the update needs every gradient first")
        elif amp and self.mode == "fused":
            raise RuntimeError("fastallreduce: a GradScaler stepped an optimizer whose update the DDP hook had already "
                               "applied to scaled gradients; use the GradScaler from the first step on (the optimizer "
                               "then stays unfused) or use register() and a plain optimizer.step()")
        elif self.mode == "probe" and pending:
            if self._changed_grads(self._versions.keys() | {id(p) for g in self.optimizer.param_groups
                                                            for p in g["params"]}):
                self._unfuse("gradients changed between backward and optimizer.step() (gradient clipping? "
                             "GradScaler.unscale_?); the update needs them first")
            else:
                self.mode = "fused"
        elif self.mode == "fused" and done and self._changed_grads(done):
            raise RuntimeError("fastallreduce: gradients changed after the update fused into the DDP hook had used "
                               "them (gradient clipping? GradScaler.unscale_?); the parameters were updated with the "
                               "unchanged gradients. Change gradients from the first step on (the optimizer then "
                               "stays unfused) or use register() and a plain optimizer.step()")
        self._versions = {}
        return done


def fused_sgd_hook(state: FusedSGDState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Averages the bucket like :func:`~fastallreduce.ddp.allreduce_hook`, then updates the
    bucket's parameters with ``state.optimizer`` in the Future's continuation (torch's
    ``_hook_then_optimizer`` pattern), so one bucket's update overlaps the next bucket's
    communication: on the communicator's thread for CPU buckets; for CUDA buckets on the stream
    torch gives a CUDA Future's callback, which waits for the allreduce. The Future holds the
    averaged gradients.

    On a rank that has joined (Join's shadow passes, outside any backward), with no optimizer
    (a copy of the state), or while the state is not in ``"fused"`` mode, it only communicates.
    """
    task = torch._C._current_graph_task_id()
    optimizer = state.optimizer
    if task != -1 and optimizer is not None and task != state._graph_task:
        state._graph_task = task
        state._backward_started()
    fut = allreduce_hook(state, bucket)
    if task == -1 or optimizer is None or state.mode != "fused":
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
      * the first ``step()`` runs unfused; if it shows that something needs every gradient before
        any update (a step skipped between backwards, as GradScaler does on overflow; gradients
        changed in place after backward, as ``clip_grad_norm_`` and ``GradScaler.unscale_`` do),
        the update stays in ``step()`` for good (a warning says why), else later steps are fused;
        a fused step whose gradients change after backward raises a RuntimeError naming it;
      * ``find_unused_parameters=True``: which parameters no rank used is known only after
        backward, so the update stays in ``step()`` (those parameters are left alone);
      * sparse gradients raise a RuntimeError;
      * one optimizer is fused into one DDP model (a second registration raises ValueError);
      * a copy of ``ddp_model`` (deepcopy, torch.save) keeps the hook but not the optimizer: it
        averages only, so train it with an optimizer of its own, or fuse one with
        ``register_fused_optimizer(copy, its_optimizer)`` before the copy's first forward.

    ``optimizer`` must be a :class:`fastallreduce.optim.SGD`; ``buffers`` and ``options`` as in
    :func:`fastallreduce.ddp.register`. Collective: call it on every rank.
    """
    state = FusedSGDState(ddp_model.process_group, optimizer, **options)
    if getattr(ddp_model, "find_unused_parameters", False):
        state._unfuse("find_unused_parameters=True: the parameters no rank used are known only after backward, "
                      "and torch.optim.SGD leaves them alone")
    install(ddp_model, state, fused_sgd_hook, buffers)
    return state
