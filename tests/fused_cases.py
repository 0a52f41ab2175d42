"""Training runs for the update fused into the DDP hook against torch.optim.SGD, in the
settings where a fused update could go wrong: GradScaler, gradient clipping, unused parameters."""
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import fastallreduce as far


class ZeroHeadNet(nn.Module):
    """Every layer's first 8 outputs are masked out, so the first 8 elements of every
    parameter's gradient are zero (what a check of leading elements cannot tell apart)."""

    def __init__(self, unused: bool = False):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 32)
        self.c = nn.Linear(32, 12)
        self.unused = nn.Linear(4, 4) if unused else None

    @staticmethod
    def _mask(h):
        m = torch.ones(h.shape[-1])
        m[:8] = 0
        return h * m

    def forward(self, x):
        h = torch.relu(self._mask(self.a(x)))
        h = torch.relu(self._mask(self.b(h)))
        return self._mask(self.c(h))


def train(fused: bool, steps: int = 6, *, scaler: bool = False, inf_steps=(), clip_from=None,
          find_unused: bool = False, gradient_as_bucket_view: bool = False):
    """``fused``: far.optim.SGD fused by register_fused_optimizer; else the reference, torch.optim.SGD
    stepped after backward (with the averaging hook). ``scaler``: a GradScaler on the loss;
    ``inf_steps``: steps whose loss rank 0 makes infinite (every rank's averaged gradients are
    then inf/NaN); ``clip_from``: clip_grad_norm_ from that step on. Returns the parameters, the
    first error raised (as text), the fused state's mode and the warnings."""
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = ZeroHeadNet(unused=find_unused)
    ddp = DDP(model, bucket_cap_mb=0.002, find_unused_parameters=find_unused,
              gradient_as_bucket_view=gradient_as_bucket_view)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if fused:
            opt = far.optim.SGD(ddp.parameters(), **kw)
            state = far.ddp.register_fused_optimizer(ddp, opt)
        else:
            opt = torch.optim.SGD(ddp.parameters(), foreach=False, **kw)
            state = far.ddp.register(ddp)
        amp = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if scaler else None
        g = torch.Generator().manual_seed(100 + rank)
        error = None
        try:
            for i in range(steps):
                opt.zero_grad()
                loss = (ddp(torch.randn(8, 16, generator=g)) ** 2).mean()
                if i in inf_steps and rank == 0:
                    loss = loss * float("inf")
                (amp.scale(loss) if amp else loss).backward()
                if amp:
                    amp.unscale_(opt)
                if clip_from is not None and i >= clip_from:
                    torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1e-2)
                if amp:
                    amp.step(opt)
                    amp.update()
                else:
                    opt.step()
        except RuntimeError as e:
            error = str(e)
    msgs = [str(w.message) for w in caught if "fastallreduce" in str(w.message)]
    return [p.detach().clone() for p in model.parameters()], error, getattr(state, "mode", None), msgs
