"""Optimizer, learning-rate schedule and recipe helpers for large-minibatch SGD (Goyal et al. 2017)."""
from .recipe import NORM_LAYERS, param_groups, scaled_lr, zero_init_last_bn
from .schedule import WarmupSchedule
from .sgd import SGD

__all__ = ["SGD", "WarmupSchedule", "scaled_lr", "param_groups", "zero_init_last_bn", "NORM_LAYERS"]
