"""SGD with momentum as one fused multi-tensor kernel (CPU: vectorised, threaded; CUDA: see below).

``fastallreduce.optim.SGD`` is a drop-in replacement for ``torch.optim.SGD``: same constructor,
same validation, same ``state_dict`` (so checkpoints move both ways). On CPU its float32/float64
results are bit-identical to ``torch.optim.SGD(foreach=False)`` whatever the thread count (ATen's
SIMD kernels round ``add(x, y, alpha)`` as one fused multiply-add, its DEFAULT build as two
operations; the kernel follows whichever ATen uses). float16/bfloat16 use float32 math and are
within one ulp of ``torch.optim.SGD(fused=True)`` (equal except where torch's scalar tail
contracts the momentum update differently and the float32 value sits on a rounding tie).

It can also keep the learning rate inside the momentum buffer, as Goyal et al. (2017) write SGD::

    u = m * u + lr * (g + wd * w);   w = w - u

with their *momentum correction* (u is scaled by lr_new / lr_old when the lr changes), which
makes it equivalent to torch's form ``v = m * v + g; w = w - lr * v``. Select it with
``lr_in_momentum=True``.

On CUDA the default is torch's own implementation (torch's fused SGD kernel for torch's form,
foreach operations for the lr-in-momentum form), whose correctness is established; our CUDA
kernel is selected with ``FASTALLREDUCE_CUDA_SGD=kernel`` or ``SGD(cuda_sgd="kernel")`` (see
:mod:`fastallreduce.optim.cuda`).
"""

import weakref
from collections.abc import Callable, Collection, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import _C
from .cuda import cuda_sgd_path, kernel_step, torch_fused_step

__all__ = ["SGD"]

# State key (never saved) that marks a buffer as holding u = lr * v and names the lr it holds.
_BUF_LR = "momentum_buffer_lr"
_fma_cache: list[bool] = []
_HUGE_PAGE_MIN_BYTES = 4 << 20


def _aten_uses_fma() -> bool:
    """ATen's SIMD CPU kernels compute add(x, y, alpha) as one fused multiply-add (vector body
    and, contracted by the compiler, the scalar tail); its DEFAULT build rounds twice."""
    if not _fma_cache:
        _fma_cache.append(torch.backends.cpu.get_cpu_capability() != "DEFAULT")
    return _fma_cache[0]


def _new_buffer(p: Tensor) -> Tensor:
    """An uninitialised momentum buffer laid out like ``p``. Large CPU buffers ask for huge pages
    before their first write: the step streams through them, and 4 KB pages cost TLB misses."""
    buf = torch.empty_like(p, memory_format=torch.preserve_format)
    if buf.device.type == "cpu" and buf.nbytes >= _HUGE_PAGE_MIN_BYTES:
        _C.advise_huge_pages(buf)
    return buf


def _pick(xs: list, idx: list[int]) -> list:
    return [xs[i] for i in idx] if xs else xs


def _scalar(x: float | Tensor) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``, in one fused kernel.

    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate (default 1e-3). A 1-element Tensor is read with ``.item()`` each step.
        momentum: momentum factor (default 0).
        dampening: dampening for momentum (default 0).
        weight_decay: L2 penalty added to the gradient (default 0).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening = 0).
        maximize: maximise the objective instead of minimising it.
        foreach, fused: accepted for compatibility and validated like torch's; the update is
            always fused here. They are kept in ``param_groups`` so that a state_dict means the
            same to ``torch.optim.SGD``.
        differentiable: must be False (the kernel is not differentiable).
        lr_in_momentum: keep the buffer in the paper's form u = lr * v (see the module doc).
        momentum_correction: in that form, scale u by lr_new / lr_old when the lr changes
            (default True; then the result equals torch's form up to rounding). Without it the
            buffer carries the old lr into the new one, as plain lr-in-momentum SGD does.
        num_threads: CPU threads for the kernel; default ``torch.get_num_threads()`` at each step.
            The result does not depend on it.
        cuda_sgd: the path of CUDA tensors, ``"torch"`` or ``"kernel"`` (default: the
            ``FASTALLREDUCE_CUDA_SGD`` environment variable, else ``"torch"``; see the module doc).

    ``state_dict()`` always holds torch's ``momentum_buffer`` (v), so it loads into
    ``torch.optim.SGD`` and back. In the lr-in-momentum form it saves v = u / lr_old (with
    correction; the exact continuation) or u / group lr (without correction: the lr of the next
    step, as after ``scheduler.step()``), and a loaded v becomes u = v * lr at the next step.
    (Live state keeps the lr a buffer holds under the key ``momentum_buffer_lr``; it is never
    saved.)
    With ``torch.amp.GradScaler`` it takes part in the scaler's protocol (``_step_supports_amp_scaling``):
    ``GradScaler.step`` always calls ``step()``, which skips the whole update when any gradient is
    inf/NaN and otherwise unscales them exactly as ``GradScaler.unscale_`` does (the parameters are
    bit for bit those of ``torch.optim.SGD``; unlike there, step hooks run on a skipped step).
    Sparse gradients raise RuntimeError. Tensors the kernels cannot take (complex dtypes,
    unusual strides, devices other than CPU and, when built with CUDA, CUDA) are updated with
    the same torch operations as ``torch.optim.SGD(foreach=False)``.
    """

    _step_supports_amp_scaling = True  # GradScaler.step calls step() with found_inf / grad_scale set

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        lr_in_momentum: bool = False,
        momentum_correction: bool = True,
        num_threads: int | None = None,
        cuda_sgd: str | None = None,
    ) -> None:
        # Validation and messages as torch.optim.SGD.
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"Invalid num_threads: {num_threads}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
            "lr_in_momentum": lr_in_momentum,
            "momentum_correction": momentum_correction,
        }
        super().__init__(params, defaults)
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if differentiable:
            raise RuntimeError("fastallreduce.optim.SGD does not support `differentiable`; use torch.optim.SGD")
        self.num_threads = num_threads
        self.cuda_sgd = cuda_sgd_path(cuda_sgd)
        self._paper_buffers = False  # some state may hold a buffer in the lr-in-momentum form
        # Set by fastallreduce.fused while the update is fused into a DDP hook; never saved.
        self._fused_state: weakref.ref | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # A group loaded from torch.optim.SGD (or an older checkpoint) lacks our keys: keep the
        # form this optimizer was built with.
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("lr_in_momentum", self.defaults.get("lr_in_momentum", False))
            group.setdefault("momentum_correction", self.defaults.get("momentum_correction", True))
        self.__dict__.setdefault("num_threads", None)
        self.__dict__.setdefault("cuda_sgd", cuda_sgd_path())
        self.__dict__.setdefault("_paper_buffers", True)
        self.__dict__.setdefault("_fused_state", None)

    # ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Performs one optimisation step; ``closure`` re-evaluates the model and returns the loss.

        With the update fused into a DDP hook (:func:`fastallreduce.ddp.register_fused_optimizer`)
        it skips the parameters the hook already updated since the last step.
        """
        # Set by GradScaler.step for the duration of this call (the _step_supports_amp_scaling protocol).
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        fused = self._fused_state() if self._fused_state is not None else None
        done = fused._begin_step(amp=found_inf is not None) if fused is not None else ()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if found_inf is not None:
            if float(found_inf.sum()) != 0:  # an inf/NaN gradient: the whole step is skipped, as torch does
                return loss
            scale = getattr(self, "grad_scale", None)  # None: GradScaler.unscale_ already ran
            if scale is not None:
                self._unscale(scale)
        for group in self.param_groups:
            self._step_group(group, done)
        return loss

    def _unscale(self, scale: Tensor) -> None:
        """Divides the gradients by GradScaler's scale with GradScaler's own operation and
        reciprocal, so that the result is bit for bit that of ``GradScaler.unscale_``."""
        by_key: dict[tuple, list[Tensor]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    by_key.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        inv = scale.double().reciprocal().float()
        for (device, _), grads in by_key.items():
            dummy = torch.zeros((), dtype=torch.float32, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, dummy, inv.to(device))

    def _step_group(self, group: dict[str, Any], skip: Collection[int] = ()) -> None:
        # Per parameter only list building stays in Python: eligibility checks run in C++.
        params = [p for p in group["params"] if p.grad is not None and id(p) not in skip]
        if not params:
            return
        self._step_params(group, params, [p.grad for p in params])

    def _step_params(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """Updates ``params`` (members of ``group``) with the given gradients. The update fused into
        the DDP hook calls this per bucket, with the bucket's averaged gradients."""
        lr = _scalar(group["lr"])
        momentum = float(group["momentum"])
        paper = bool(group["lr_in_momentum"]) and momentum != 0
        if paper and lr == 0:
            raise ValueError("lr_in_momentum=True cannot hold the momentum buffer at lr=0 (u = lr * v); "
                             "use a positive lr or the default form")
        scales: list[float] | None = None
        bufs: list[Tensor | None] = []
        init: list[bool] = []
        if momentum != 0:
            states = [self.state[p] for p in params]
            bufs = [st.get("momentum_buffer") for st in states]
            if paper or self._paper_buffers:  # buffers may need converting between the forms
                correct = bool(group["momentum_correction"])
                scales = [self._prepare_buffer(st, b, paper, lr, correct) for st, b in zip(states, bufs)]
                bufs = [st.get("momentum_buffer") for st in states]
            init = [b is None for b in bufs]
            if any(init):  # first step: the kernel writes the new buffer without reading it
                for i, b in enumerate(bufs):
                    if b is None:
                        bufs[i] = states[i]["momentum_buffer"] = _new_buffer(params[i])
        args = (lr, momentum, float(group["dampening"]), _scalar(group["weight_decay"]), bool(group["nesterov"]),
                bool(group["maximize"]), paper)
        if scales is None or len(set(scales)) == 1:
            self._update(params, grads, bufs, init, args, scales[0] if scales else 1.0)
        else:  # buffers last updated at different lrs (parameters that skipped steps)
            for scale in set(scales):
                idx = [i for i, s in enumerate(scales) if s == scale]
                self._update([params[i] for i in idx], [grads[i] for i in idx], [bufs[i] for i in idx],
                             [init[i] for i in idx], args, scale)
        if paper:
            for st in states:
                st[_BUF_LR] = lr
            self._paper_buffers = True

    def _update(self, params: list[Tensor], grads: list[Tensor], bufs: list, init: list[bool], args: tuple,
                scale: float) -> None:
        """One multi-tensor call per device type; what no kernel takes goes through torch operations."""
        with torch.profiler.record_function("fastallreduce::sgd_step"):
            left = _C.sgd_step_cpu(params, grads, bufs, init, *args, scale, _aten_uses_fma(),
                                   self.num_threads or torch.get_num_threads())
            cuda = [i for i in left if params[i].is_cuda]
            if cuda:
                rest = self._cuda_update(_pick(params, cuda), _pick(grads, cuda), _pick(bufs, cuda),
                                         _pick(init, cuda), args, scale)
                left = [i for i in left if not params[i].is_cuda] + [cuda[j] for j in rest]
            if left:
                self._torch_update(_pick(params, left), _pick(grads, left), _pick(bufs, left), _pick(init, left),
                                   scale, *args)

    def _cuda_update(self, params: list[Tensor], grads: list[Tensor], bufs: list, init: list[bool], args: tuple,
                     scale: float) -> list[int]:
        """CUDA tensors on the chosen path (:mod:`fastallreduce.optim.cuda`); the positions of those
        left to the foreach operations of :meth:`_torch_update`."""
        if self.cuda_sgd == "kernel":
            return kernel_step(params, grads, bufs, init, args, scale)
        if args[-1]:  # lr-in-momentum: torch has no kernel for it; foreach operations
            return list(range(len(params)))
        return torch_fused_step(params, grads, bufs, init, *args[:-1])

    @staticmethod
    def _prepare_buffer(state: dict, buf: Tensor | None, paper: bool, lr: float, correct: bool) -> float:
        """Brings an existing buffer into the group's form; returns the momentum correction factor."""
        held = state.get(_BUF_LR)
        if buf is None:
            state.pop(_BUF_LR, None)
            return 1.0
        if not paper:
            if held is not None:  # group switched back to torch's form
                state["momentum_buffer"] = buf.div(held)
                del state[_BUF_LR]
            return 1.0
        if held is None:  # a torch-form buffer (loaded state_dict, or the group switched form)
            state["momentum_buffer"] = buf.mul(lr)
            state[_BUF_LR] = lr
            return 1.0
        return lr / held if correct else 1.0

    @staticmethod
    def _torch_update(params: list[Tensor], grads: list[Tensor], bufs: list, init: list[bool], scale: float,
                      lr: float, momentum: float, dampening: float, wd: float, nesterov: bool, maximize: bool,
                      paper: bool) -> None:
        """The same update with torch's multi-tensor (foreach) operations: the default CUDA path of
        the lr-in-momentum form, and the path of tensors no kernel takes (complex dtypes, unusual
        strides, other devices), where foreach runs per tensor exactly as torch.optim.SGD(foreach=False)."""
        g = torch._foreach_neg(grads) if maximize else list(grads)
        if wd != 0:
            g = torch._foreach_add(g, params, alpha=wd)
        if momentum != 0:
            first = [i for i, fresh in enumerate(init) if fresh]
            cont = [i for i, fresh in enumerate(init) if not fresh]
            if first:  # a new buffer starts as the gradient (times lr in the paper's form)
                start = _pick(g, first)
                torch._foreach_copy_(_pick(bufs, first), torch._foreach_mul(start, lr) if paper else start)
            if cont:
                b = _pick(bufs, cont)
                torch._foreach_mul_(b, momentum * scale)  # scale: the momentum correction (1 in torch's form)
                torch._foreach_add_(b, _pick(g, cont), alpha=(1 - dampening) * (lr if paper else 1.0))
            if paper:
                step = bufs
                if nesterov:
                    step = torch._foreach_mul(g, lr)
                    torch._foreach_add_(step, bufs, alpha=momentum)
                torch._foreach_sub_(params, step)
                return
            g = torch._foreach_add(g, bufs, alpha=momentum) if nesterov else bufs
        torch._foreach_add_(params, g, alpha=-lr)

    # ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim.SGD's state_dict: ``momentum_buffer`` always in torch's form (v)."""
        sd = super().state_dict()
        # Packed state is keyed by the parameter's position over all groups (as torch packs it).
        for index, group in enumerate(g for g in self.param_groups for _ in g["params"]):
            st = sd["state"].get(index)
            if st is None or _BUF_LR not in st:
                continue
            st = dict(st)  # never modify the live state
            held = st.pop(_BUF_LR)
            if st.get("momentum_buffer") is not None:
                div = held if group["momentum_correction"] else _scalar(group["lr"])
                st["momentum_buffer"] = st["momentum_buffer"].div(div)
            sd["state"][index] = st
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state_dict of this class or of ``torch.optim.SGD`` (buffers in torch's form)."""
        super().load_state_dict(state_dict)
        for st in self.state.values():
            st.pop(_BUF_LR, None)  # loaded buffers are torch-form; converted at the next step
        self._paper_buffers = False
