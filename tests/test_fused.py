"""The update fused into the DDP hook never changes parameters differently from
torch.optim.SGD stepped after backward: GradScaler, clipping and unused parameters."""
import pytest
import torch

import fused_cases as fc

TIMEOUT = 180


def _same_as_reference(pool, **kw):
    p = pool(2)
    ref = p.run(fc.train, False, timeout=TIMEOUT, **kw)
    got = p.run(fc.train, True, timeout=TIMEOUT, **kw)
    for r in range(2):
        assert ref[r][1] is None and got[r][1] is None, (ref[r][1], got[r][1])
        for a, b in zip(ref[r][0], got[r][0]):
            assert torch.isfinite(b).all()
            assert torch.equal(a, b)
    return got


@pytest.mark.parametrize("inf_steps", [(0, 3), (2,)])
def test_grad_scaler_skips_overflowed_steps_like_torch(pool, inf_steps):
    # (0, 3): the very first step overflows (GradScaler skips step()); (2,): the first step
    # unscales the gradients in place.
    got = _same_as_reference(pool, scaler=True, inf_steps=inf_steps)
    for _, _, mode, msgs in got:
        assert mode == "unfused" and any("GradScaler" in m for m in msgs)


@pytest.mark.parametrize("bucket_view", [False, True])
def test_clipping_from_the_first_step_is_honoured(pool, bucket_view):
    # The first 8 elements of every gradient are zero: a check of leading elements misses it.
    got = _same_as_reference(pool, clip_from=0, gradient_as_bucket_view=bucket_view)
    for _, _, mode, msgs in got:
        assert mode == "unfused" and any("clipping" in m for m in msgs)


@pytest.mark.parametrize("bucket_view", [False, True])
def test_unchanged_gradients_fuse(pool, bucket_view):
    got = _same_as_reference(pool, gradient_as_bucket_view=bucket_view)
    for _, _, mode, msgs in got:
        assert mode == "fused" and not msgs


def test_clipping_that_starts_after_fusing_raises_on_every_rank(pool):
    for _, error, mode, _ in pool(2).run(fc.train, True, clip_from=3, timeout=TIMEOUT):
        assert mode == "fused" and error is not None and "gradients changed" in error


def test_parameters_unused_on_every_rank_are_left_alone(pool):
    got = _same_as_reference(pool, find_unused=True)
    for params, _, mode, msgs in got:
        assert mode == "unfused" and any("find_unused_parameters" in m for m in msgs)
