"""The SGD update fused into the DDP communication hook: :func:`register_fused_optimizer`,
:class:`FusedSGDState`, :func:`fused_sgd_hook` (defined in :mod:`fastallreduce.ddp.fused_update`;
also importable from :mod:`fastallreduce.ddp`).

    opt = fastallreduce.optim.SGD(ddp_model.parameters(), lr=0.1, momentum=0.9)
    state = fastallreduce.ddp.register_fused_optimizer(ddp_model, opt)
"""
from .ddp.fused_update import FusedSGDState, fused_sgd_hook, register_fused_optimizer

__all__ = ["FusedSGDState", "fused_sgd_hook", "register_fused_optimizer"]
