"""Helpers for the large-minibatch recipe of Goyal et al. (2017) (see shared/paper-notes.md).

    model = ResNet50()
    zero_init_last_bn(model)                                    # gamma = 0 in each residual block
    lr = scaled_lr(world_size * batch_per_worker * accumulation) # 0.1 * kn / 256
    opt = SGD(param_groups(model, weight_decay=1e-4), lr=lr, momentum=0.9, nesterov=True)
    sched = WarmupSchedule(opt, iters_per_epoch=len(loader))   # gradual warmup, /10 at 30, 60, 80
"""
import re

import torch
from torch import nn

__all__ = ["NORM_LAYERS", "scaled_lr", "param_groups", "zero_init_last_bn"]

# Normalisation layers: their affine parameters get no weight decay (BatchNorm*, SyncBatchNorm
# and InstanceNorm* derive from _NormBase).
NORM_LAYERS: tuple[type[nn.Module], ...] = tuple(
    t for t in (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, getattr(nn, "RMSNorm", None),
                nn.LocalResponseNorm)
    if t is not None)


def scaled_lr(batch_size: int, base_lr: float = 0.1, reference_batch: int = 256) -> float:
    """Linear scaling rule: ``base_lr * batch_size / reference_batch``.

    ``batch_size`` is the global minibatch: workers × samples per worker × gradient-accumulation
    steps (kn in the paper). ``scaled_lr(8192)`` is 3.2.
    """
    if batch_size <= 0 or reference_batch <= 0:
        raise ValueError(f"batch sizes must be positive, got {batch_size} and {reference_batch}")
    if base_lr < 0:
        raise ValueError(f"Invalid learning rate: {base_lr}")
    return base_lr * batch_size / reference_batch


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: weights with ``weight_decay``; biases and the parameters of
    normalisation layers (:data:`NORM_LAYERS`) with ``weight_decay=0`` (the paper applies no
    weight decay to BatchNorm's gamma and beta). Shared parameters appear once; empty groups
    are left out. Pass the result to any optimizer in place of ``model.parameters()``."""
    if weight_decay < 0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_LAYERS)
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if is_norm or name == "bias" else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


_BN_NAME = re.compile(r"bn(\d+)$")


def _last_norm(block: nn.Module) -> tuple[str, nn.Module] | None:
    """The last normalisation layer of a residual block, or None when ``block`` is not one.

    Convention, first match wins:
      1. ``block.last_bn``: the norm module itself, or the name of a child holding it;
      2. a child named ``bn_last``;
      3. torchvision-style blocks (a ``downsample`` attribute, possibly None, as BasicBlock
         and Bottleneck have): the child ``bnN`` with the largest N (bn2 / bn3).
    """
    marker = getattr(block, "last_bn", None)
    if isinstance(marker, nn.Module):
        for name, child in block.named_modules():
            if child is marker:
                return name, child
        return "last_bn", marker
    if isinstance(marker, str):
        return marker, block.get_submodule(marker)
    children = dict(block.named_children())
    if "bn_last" in children:
        return "bn_last", children["bn_last"]
    if hasattr(block, "downsample"):
        numbered = [(int(m.group(1)), n) for n in children if (m := _BN_NAME.match(n))]
        if numbered:
            name = max(numbered)[1]
            return name, children[name]
    return None


def zero_init_last_bn(model: nn.Module) -> list[str]:
    """Sets gamma = 0 in the last normalisation layer of every residual block, so that each
    block starts as the identity (the paper's zero-gamma initialisation).

    Blocks are found by the convention of :func:`_last_norm` (torchvision's BasicBlock and
    Bottleneck work as they are; a custom block sets ``self.last_bn = self.<its last norm>`` or
    names that layer ``bn_last``). Returns the qualified names of the layers set to zero.

    Raises:
        ValueError: no residual block found, or a block's last norm has no affine weight.
    """
    done: list[str] = []
    for prefix, module in model.named_modules():
        found = _last_norm(module)
        if found is None:
            continue
        name, norm = found
        full = f"{prefix}.{name}" if prefix else name
        weight = getattr(norm, "weight", None)
        if not isinstance(norm, NORM_LAYERS) or not isinstance(weight, torch.Tensor):
            raise ValueError(f"zero_init_last_bn: {full} ({type(norm).__name__}) is not a normalisation "
                             "layer with an affine weight")
        with torch.no_grad():
            weight.zero_()
        done.append(full)
    if not done:
        raise ValueError("zero_init_last_bn: found no residual block (torchvision-style BasicBlock/Bottleneck, "
                         "or a module with a `last_bn` attribute or a `bn_last` child)")
    return done
