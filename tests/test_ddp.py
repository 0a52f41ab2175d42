"""DDP with fastallreduce's hook gives the same training result as DDP's default allreduce."""
import pytest
import torch

import ddp_cases as dc

TIMEOUT = 180


def _compare(pool, world, tol=None, **kw):
    p = pool(world)
    ref = p.run(dc.train, False, timeout=TIMEOUT, **kw)
    got = p.run(dc.train, True, timeout=TIMEOUT, **kw)
    for r in range(world):
        if ref[r] is None:
            assert got[r] is None
            continue
        for a, b in zip(ref[r][0], got[r][0]):
            if tol is None:
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
            else:
                torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    return got


@pytest.mark.parametrize("world", [2, 3, 4])
def test_parity_default(pool, world):
    # A BatchNorm model: its buffers (compared too) are broadcast through the Communicator.
    got = _compare(pool, world, bn=True)
    stats = got[0][1]
    assert stats["bytes"] > 0 and stats["buckets"] >= 2
    assert "allreduce_hook" in stats["comm_hook"]
    assert all(g[1]["buffer_syncs"] == 10 for g in got), [g[1] for g in got]


def test_buffers_left_to_ddp(pool):
    got = _compare(pool, 2, bn=True, buffers=False)
    assert all(g[1]["buffer_syncs"] == 0 for g in got)


def test_integer_valued_model_exact(pool):
    p = pool(2)
    ref = p.run(dc.train, False, int_valued=True, timeout=TIMEOUT)
    got = p.run(dc.train, True, int_valued=True, timeout=TIMEOUT)
    for a, b in zip(ref[0][0], got[0][0]):
        assert torch.isfinite(a).all()
        assert torch.equal(a, b)


@pytest.mark.parametrize("opt", [dict(gradient_as_bucket_view=True), dict(static_graph=True),
                                 dict(find_unused=True, unused=True), dict(accumulate=3),
                                 dict(algorithm="ring"), dict(algorithm="halving_doubling")])
def test_parity_options(pool, opt):
    _compare(pool, 2, bn=True, **opt)


ZERO_COPY_OPTS = [dict(), dict(gradient_as_bucket_view=True), dict(static_graph=True),
                  dict(find_unused=True, unused=True), dict(accumulate=3), dict(uneven=True),
                  dict(gradient_as_bucket_view=True, static_graph=True)]


@pytest.mark.parametrize("opt", ZERO_COPY_OPTS, ids=lambda o: ",".join(o) or "defaults")
def test_zero_copy_buckets(pool, opt):
    """Buckets of 64-300 KiB, moved into registered memory at their first hook call: the last
    step copies nothing into shared memory, training matches DDP's own allreduce, and with
    gradient_as_bucket_view every .grad is still a view of its (moved) bucket."""
    got = _compare(pool, 2, wide=True, bucket_cap_mb=0.1, bn=True, **opt)
    for r, (_, stats) in enumerate(got):
        assert stats["buckets"] >= 2, stats
        assert stats["bytes_copied_in"] == 0, (r, stats)
        assert stats["zero_copy_fallbacks"] == {}, (r, stats)
        if opt.get("gradient_as_bucket_view"):
            assert stats["grads_registered"] and all(stats["grads_registered"]), (r, stats)


def test_zero_copy_off_copies(pool):
    got = pool(2).run(dc.train, True, wide=True, bucket_cap_mb=0.1, zero_copy=False, timeout=TIMEOUT)
    for _, stats in got:
        assert stats["bytes_copied_in"] > 0 and set(stats["zero_copy_fallbacks"]) == {"disabled"}, stats


def test_parity_subgroup(pool):
    _compare(pool, 3, group_ranks=[0, 2], bn=True)


@pytest.mark.parametrize("world", [2, 3])
def test_join_uneven_inputs(pool, world):
    # Rank r runs 10 + r steps. Once rank 0 has joined, DDP takes the buffers from a rank still
    # training; the broadcast through the Communicator must use the same source.
    got = _compare(pool, world, uneven=True, bn=True)
    assert all(g[1]["buffer_syncs"] == 10 + world - 1 for g in got), [g[1] for g in got]


@pytest.mark.parametrize("compression,tol", [("bf16", 2e-2), ("fp16", 2e-3)])
def test_compression(pool, compression, tol):
    _compare(pool, 2, tol=tol, compression=compression)


@pytest.mark.parametrize("world,opts", [(2, {}), (3, {"accumulate": 2}), (2, {"gradient_as_bucket_view": True}),
                                        (4, {"momentum": 0.0}), (2, {"uneven": True})])
def test_fused_update_equals_step_after_backward(pool, world, opts):
    p = pool(world)
    ref = p.run(dc.train_fused, False, timeout=TIMEOUT, **opts)
    got = p.run(dc.train_fused, True, timeout=TIMEOUT, **opts)
    for r in range(world):
        assert ref[r][1] is None and got[r][1] is None
        for a, b in zip(ref[r][0], got[r][0]):
            assert torch.equal(a, b)


def test_fused_update_honours_clipping(pool):
    # Clipping from the first step on: the optimizer stays unfused (tests/test_fused.py has more).
    p = pool(2)
    ref = p.run(dc.train_fused, False, clip=True, timeout=TIMEOUT)
    got = p.run(dc.train_fused, True, clip=True, timeout=TIMEOUT)
    for (a_params, a_err), (b_params, b_err) in zip(ref, got):
        assert a_err is None and b_err is None
        assert all(torch.equal(a, b) for a, b in zip(a_params, b_params))


@pytest.mark.parametrize("schedulers", [False, True])
def test_fused_update_keeps_step_hooks_and_schedulers(pool, schedulers):
    # The optimizer's own and the global step hooks run once per step; with `schedulers`, a
    # WarmupSchedule and a StepLR are made after register_fused_optimizer (each wraps
    # optimizer.step again).
    p = pool(2)
    ref = p.run(dc.train_scheduled, False, schedulers=schedulers, timeout=TIMEOUT)
    got = p.run(dc.train_scheduled, True, schedulers=schedulers, timeout=TIMEOUT)
    for r in range(2):
        assert got[r][2] == ref[r][2]  # the same lr at every step
        assert got[r][1] == {"pre": 8, "post": 8, "global_pre": 8, "global_post": 8}, got[r][1]
        for a, b in zip(ref[r][0], got[r][0]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hook,how,fuse_copy", [("register", "deepcopy", False), ("register", "save", False),
                                                ("fused", "deepcopy", False), ("fused", "save", False),
                                                ("fused", "save", True)])
def test_copy_of_hooked_model_trains(pool, hook, how, fuse_copy):
    # The copy gets its own hook state and, at its first use, its own Communicator (a collective
    # on every rank); training it leaves the original alone, and both train on correctly. A
    # fused copy has no optimizer (it only averages) unless one of its own is fused into it.
    p = pool(2)
    ref = p.run(dc.train_copy, None, how, timeout=TIMEOUT)
    got = p.run(dc.train_copy, hook, how, fuse_copy=fuse_copy, timeout=TIMEOUT)
    name = "fused_sgd_hook" if hook == "fused" else "allreduce_hook"
    for r in range(2):
        orig, twin, untouched, info = got[r]
        assert untouched
        assert info["lazy"] and info["own_state"] and info["own_comm"] and info["buckets"] > 0, info
        assert name in info["comm_hook"] and info["hooks"] == (1, 1), info
        assert info["optimizer"] == ("own" if fuse_copy else "none"), info
        if hook == "fused":
            assert "already fused" in info["second_fusion"]
        for a, b in zip(ref[r][0] + ref[r][1], orig + twin):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["ring", "halving_doubling", "auto"])
@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_compression_does_not_overflow(pool, compression, algorithm):
    # The sum of the ranks' gradients overflows float16, their average does not.
    for out, expected in pool(2).run(dc.compressed_average, compression, algorithm, timeout=TIMEOUT):
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        torch.testing.assert_close(out, expected, rtol=1e-2 if compression == "bf16" else 1e-3, atol=0)


def test_compression_divides_before_the_cast_unlike_torch(pool):
    # docs/gpu.md and the hook's docstring: ours divides, then casts; torch casts, then divides.
    for ours, theirs in pool(2).run(dc.cast_order_against_torch, timeout=TIMEOUT):
        assert torch.equal(ours, torch.full_like(ours, 30000.0))
        assert torch.isinf(theirs).all()


def test_hook_returns_the_engines_future_and_engine_stats(pool):
    # Issue 27 item 5: CPU buckets cost the hook no callback on the engine's worker thread; the
    # step statistics are the engine's accounting of the step's calls.
    for same, stats, values, steps in pool(2).run(dc.hook_returns_engine_future, timeout=120):
        assert same, "the hook wrapped the engine's future"
        assert values == [1.5]
        assert steps == 3
        assert stats["buckets"] == 3 and stats["bytes"] == 4 * (1000 + 2000 + 3000), stats
        assert stats["bytes_copied_in"] == 0 and stats["comm_time_s"] > 0 and stats["exposed_s"] >= 0, stats
