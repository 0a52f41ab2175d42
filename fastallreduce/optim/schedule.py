"""Learning-rate schedule of Goyal et al. (2017): warmup, then step or cosine decay, per iteration."""
import math
from collections.abc import Sequence

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupSchedule"]

_WARMUPS = ("gradual", "constant", None)
_DECAYS = ("multistep", "cosine", None)


class WarmupSchedule(LRScheduler):
    """Warmup then decay, stepped once per *iteration* (call ``step()`` after ``optimizer.step()``).

    Each parameter group's lr at construction (e.g. from :func:`scaled_lr`) is its target
    η. With T = round(warmup_epochs * iters_per_epoch), s = warmup_start_lr and i = the number of
    scheduler steps taken so far::

        i < T:   lr(i) = s + (η - s) * i / T          warmup="gradual" (linear, every iteration)
                 lr(i) = s                            warmup="constant" (then jump to η)
        i >= T:  lr(i) = η * gamma ** #{m in milestones : i >= m * iters_per_epoch}   decay="multistep"
                 lr(i) = η * (1 + cos(π (i - T) / (total_epochs * iters_per_epoch - T))) / 2
                                                      decay="cosine" (0 from the last iteration on)
                 lr(i) = η                            decay=None

    ``warmup=None`` means T = 0. The paper's ImageNet recipe is the default: gradual warmup over
    5 epochs from 0.1, lr / 10 at epochs 30, 60 and 80.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        iters_per_epoch: optimizer steps per epoch (≥ 1).
        warmup: "gradual", "constant" or None.
        warmup_epochs: warmup length in epochs (≥ 0; fractions allowed).
        warmup_start_lr: s, one value or one per parameter group.
        milestones: epochs at which multistep decay multiplies the lr by ``gamma``.
        gamma: multistep decay factor.
        decay: "multistep", "cosine" or None.
        total_epochs: length of training; needed by cosine decay.
        last_epoch: as for any LRScheduler (-1: a fresh start). To resume, construct the
            scheduler on the restored optimizer and ``load_state_dict`` the saved one.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        iters_per_epoch: int,
        warmup: str | None = "gradual",
        warmup_epochs: float = 5,
        warmup_start_lr: float | Sequence[float] = 0.1,
        milestones: Sequence[float] = (30, 60, 80),
        gamma: float = 0.1,
        decay: str | None = "multistep",
        total_epochs: float | None = None,
        last_epoch: int = -1,
    ) -> None:
        if int(iters_per_epoch) != iters_per_epoch or iters_per_epoch < 1:
            raise ValueError(f"iters_per_epoch must be a positive integer, got {iters_per_epoch!r}")
        if warmup not in _WARMUPS:
            raise ValueError(f"warmup must be one of {_WARMUPS}, got {warmup!r}")
        if decay not in _DECAYS:
            raise ValueError(f"decay must be one of {_DECAYS}, got {decay!r}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        n_groups = len(optimizer.param_groups)
        if isinstance(warmup_start_lr, (int, float)):
            starts = [float(warmup_start_lr)] * n_groups
        else:
            starts = [float(s) for s in warmup_start_lr]
            if len(starts) != n_groups:
                raise ValueError(f"warmup_start_lr has {len(starts)} values for {n_groups} parameter groups")
        if any(s < 0 for s in starts):
            raise ValueError(f"warmup_start_lr must be >= 0, got {warmup_start_lr}")
        self.iters_per_epoch = int(iters_per_epoch)
        self.warmup = warmup
        self.warmup_iters = 0 if warmup is None else round(warmup_epochs * self.iters_per_epoch)
        self.warmup_start_lrs = starts
        self.milestone_iters = sorted(round(m * self.iters_per_epoch) for m in milestones)
        self.gamma = float(gamma)
        self.decay = decay
        self.total_iters = None if total_epochs is None else round(total_epochs * self.iters_per_epoch)
        if decay == "cosine" and (self.total_iters is None or self.total_iters <= self.warmup_iters):
            raise ValueError("decay='cosine' needs total_epochs longer than the warmup")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, i: int) -> list[float]:
        """The lr of every parameter group after ``i`` scheduler steps."""
        T = self.warmup_iters
        out = []
        for eta, s in zip(self.base_lrs, self.warmup_start_lrs):
            eta = float(eta)
            if i < T:
                out.append(s + (eta - s) * i / T if self.warmup == "gradual" else s)
            elif self.decay == "multistep":
                out.append(eta * self.gamma ** sum(1 for m in self.milestone_iters if i >= m))
            elif self.decay == "cosine":
                frac = min(1.0, (i - T) / (self.total_iters - T))
                out.append(eta * (1 + math.cos(math.pi * frac)) / 2)
            else:
                out.append(eta)
        return out

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Closed form: depends only on ``last_epoch`` (so resuming from state_dict is exact)."""
        return self.lr_at(self.last_epoch)

    def _get_closed_form_lr(self) -> list[float]:
        return self.lr_at(self.last_epoch)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores the schedule and sets the optimizer's lr to its value at the restored step,
        whatever the order in which optimizer and scheduler were rebuilt."""
        super().load_state_dict(state_dict)
        for group, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_epoch)):
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
