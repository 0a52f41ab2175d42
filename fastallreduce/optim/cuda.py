"""Which path :class:`~fastallreduce.optim.SGD` takes for CUDA tensors, and the torch one.

``FASTALLREDUCE_CUDA_SGD`` (or ``SGD(cuda_sgd=...)``) chooses:

* ``torch`` (default): torch's own multi-tensor implementations, whose correctness is
  established -- torch's fused SGD kernel (``torch.optim.SGD(fused=True)``) for torch's form,
  and torch's foreach operations for the lr-in-momentum form (which torch has no kernel for).
* ``kernel``: fastallreduce's own CUDA kernel (``csrc/cuda/sgd_kernel.cu``), one launch per
  parameter group for both forms. It stays opt-in until it has passed its GPU tests on a GPU.
"""
from typing import List, Optional

import torch
from torch import Tensor
from torch.optim.sgd import sgd as torch_sgd

from .. import _C, knobs

#: The CUDA paths, by the name ``FASTALLREDUCE_CUDA_SGD`` / ``cuda_sgd`` takes.
ENV = "FASTALLREDUCE_CUDA_SGD"
CUDA_SGD_PATHS = knobs.knob(ENV).choices
#: Whether this build has our CUDA SGD kernel (a CUDA build of the extension).
HAS_KERNEL = hasattr(_C, "sgd_step_cuda")
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def cuda_sgd_path(choice: Optional[str] = None) -> str:
    """The CUDA path for ``choice`` (None: ``$FASTALLREDUCE_CUDA_SGD``, default ``torch``).

    Raises ValueError for an unknown name, RuntimeError for ``kernel`` in a build without CUDA.
    """
    if choice is None:
        name = str(knobs.value(ENV))  # ValueError naming the variable when it is not a path
    else:
        name = choice.strip().lower()
        if name not in CUDA_SGD_PATHS:
            raise ValueError(f"fastallreduce: cuda_sgd={name!r}; choose from {CUDA_SGD_PATHS}")
    if name == "kernel" and not HAS_KERNEL:
        raise RuntimeError("fastallreduce: the CUDA SGD kernel was asked for, but this build has no CUDA sources "
                           "(rebuild with torch's CUDA build and nvcc, FASTALLREDUCE_CUDA=1)")
    return name


def kernel_step(params: List[Tensor], grads: List[Tensor], bufs: list, init: List[bool], args: tuple,
                scale: float) -> List[int]:
    """Our kernel on the CUDA tensors it takes, one launch per device; the positions of the rest."""
    left = list(range(len(params)))
    while left:
        pick = lambda xs: [xs[i] for i in left] if xs else xs  # noqa: E731
        rest = _C.sgd_step_cuda(pick(params), pick(grads), pick(bufs), pick(init), *args, scale)
        if len(rest) == len(left):
            break
        left = [left[j] for j in rest]  # tensors on another CUDA device: next round
    return left


def torch_fused_step(params: List[Tensor], grads: List[Tensor], bufs: list, init: List[bool], lr: float,
                     momentum: float, dampening: float, wd: float, nesterov: bool, maximize: bool) -> List[int]:
    """torch's fused SGD (torch's form) on the floating tensors; the positions of the rest.

    torch starts a buffer (``is_first_step``) only when every buffer of the call is new, so new
    and continuing buffers go in separate calls; a new one is written into the buffer the
    optimizer already holds.
    """
    take = [i for i, p in enumerate(params) if p.dtype in _FUSED_DTYPES and not p.is_complex()]
    hyper = dict(weight_decay=wd, momentum=momentum, lr=lr, dampening=dampening, nesterov=nesterov,
                 maximize=maximize)
    for fresh in (True, False):
        idx = [i for i in take if momentum == 0 or bool(init[i]) == fresh]
        if not idx:
            continue
        ps, gs = [params[i] for i in idx], [grads[i] for i in idx]
        if momentum == 0:
            torch_sgd(ps, gs, [None] * len(idx), fused=True, **hyper)
            break
        bs = [None] * len(idx) if fresh else [bufs[i] for i in idx]
        torch_sgd(ps, gs, bs, fused=True, **hyper)
        if fresh:
            torch._foreach_copy_([bufs[i] for i in idx], bs)
    taken = set(take)
    return [i for i in range(len(params)) if i not in taken]
