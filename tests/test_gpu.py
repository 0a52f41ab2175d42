"""GPU tests (issue 16): skipped without CUDA; those that need NCCL between distinct GPUs (names
with ``two_gpus``) skip on one GPU, since NCCL refuses two ranks on one GPU. ``python -m
fastallreduce check --gpu`` runs every test marked ``gpu`` (this file's and tests/test_optim.py's),
one-GPU and two-GPU tests as separate steps."""
import pytest
import torch

import gpu_cases as gc
from fastallreduce.launch import RankPool

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)")]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2,
                              reason="needs 2 GPUs: NCCL refuses two ranks on one GPU ('Duplicate GPU detected')")
TIMEOUT = 100
_pools: dict = {}


def _pool(world: int, backend: str = "nccl") -> RankPool:
    key = (world, backend)
    p = _pools.get(key)
    if p is None or not p.alive():
        p = _pools[key] = RankPool(world, backend=backend, start_timeout=60, pg_timeout_s=60)
    return p


def teardown_module() -> None:
    for p in _pools.values():
        p.close()


# ---- one GPU: world size 1 exercises every NCCL plumbing path ------------------------------------
def test_allreduce_matrix_world1():
    [(bad, algo)] = _pool(1).run(gc.allreduce_matrix, timeout=TIMEOUT)
    assert bad == [] and algo == "nccl", bad


def test_gather_family_world1():
    [bad] = _pool(1).run(gc.gather_family, timeout=TIMEOUT)
    assert bad == []


def test_stream_ordering_and_async_future_world1():
    [(sync_ok, async_ok, then_ok, made)] = _pool(1).run(gc.stream_ordering, timeout=TIMEOUT)
    assert sync_ok and async_ok and then_ok and made


def test_hooks_on_cuda_buckets_world1():
    p = _pool(1)
    ref = p.run(gc.ddp_train, hook=False, int_valued=True, timeout=TIMEOUT)
    got = p.run(gc.ddp_train, hook=True, int_valued=True, timeout=TIMEOUT)
    for a, b in zip(ref[0][0], got[0][0]):
        assert torch.equal(a, b)
    for compression in ("bf16", "fp16"):
        got = p.run(gc.ddp_train, hook=True, compression=compression, timeout=TIMEOUT)
        ref = p.run(gc.ddp_train, hook=False, timeout=TIMEOUT)
        for a, b in zip(ref[0][0], got[0][0]):
            torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)


def test_fused_optimizer_on_cuda_buckets_world1():
    p = _pool(1)
    ref = p.run(gc.ddp_train_fused, fused=False, torch_sgd=True, timeout=TIMEOUT)
    got = p.run(gc.ddp_train_fused, fused=True, timeout=TIMEOUT)
    assert got[0][1] is None
    for a, b in zip(ref[0][0], got[0][0]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_backend_routes_cuda_to_nccl_world1():
    [(ok, gathered, cpu_ok, made)] = _pool(1, "fastallreduce").run(gc.backend_on_cuda, timeout=TIMEOUT)
    assert ok and cpu_ok and made and gathered == [[0.0, 0.0, 0.0]]


def test_cupy_arrays_world1():
    pytest.importorskip("cupy", reason="CuPy is optional")
    [(same, a, same_b, b)] = _pool(1).run(gc.arrays_cupy, timeout=TIMEOUT)
    assert same and same_b and a == [float(i) for i in range(10)] and b == [1.0] * 4


@pytest.mark.parametrize("lr_in_momentum", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sgd_kernel_matches_torch_fused(lr_in_momentum, dtype):
    """Our kernel, the default torch path and torch's fused SGD on the same CUDA tensors, 12 steps
    with a gradual warmup of the lr (so the lr-in-momentum form applies momentum correction)."""
    from fastallreduce.optim import SGD
    from fastallreduce.optim.cuda import HAS_KERNEL

    if not HAS_KERNEL:
        pytest.skip("this build has no CUDA sources")
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 3, 7, 7), (64,), (1000, 2048), (3,), (257, 129)]
    base = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [[torch.randn(s, generator=gen).to(dtype) for s in shapes] for _ in range(12)]
    hp = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    results = {}
    for name in ("torch", "kernel", "reference"):
        ps = [b.clone().cuda() for b in base]
        opt = (torch.optim.SGD(ps, fused=True, **hp) if name == "reference"
               else SGD(ps, cuda_sgd=name, lr_in_momentum=lr_in_momentum, **hp))
        for i, gs in enumerate(grads):
            for p, g in zip(ps, gs):
                p.grad = g.cuda()
            for group in opt.param_groups:
                group["lr"] = 0.1 * (i + 1) / 12  # gradual warmup
            opt.step()
        results[name] = [p.float().cpu() for p in ps]
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    for name in ("torch", "kernel"):
        for a, b in zip(results["reference"], results[name]):
            torch.testing.assert_close(b, a, **tol)


# ---- two or more GPUs: NCCL between distinct GPUs -------------------------------------------------
@two_gpus
def test_two_gpus_allreduce_matches_nccl():
    for bad, algo in _pool(2).run(gc.allreduce_matrix, True, timeout=TIMEOUT):
        assert bad == [] and algo == "nccl", bad


@two_gpus
def test_two_gpus_gather_family():
    for bad in _pool(2).run(gc.gather_family, timeout=TIMEOUT):
        assert bad == []


@two_gpus
def test_two_gpus_ddp_hook_parity_on_nccl():
    p = _pool(2)
    ref = p.run(gc.ddp_train, hook=False, int_valued=True, timeout=TIMEOUT)
    got = p.run(gc.ddp_train, hook=True, int_valued=True, timeout=TIMEOUT)
    for r in range(2):
        for a, b in zip(ref[r][0], got[r][0]):
            assert torch.equal(a, b)
    ref = p.run(gc.ddp_train, hook=False, timeout=TIMEOUT)
    got = p.run(gc.ddp_train, hook=True, compression="bf16", timeout=TIMEOUT)
    for a, b in zip(ref[0][0], got[0][0]):
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)


@two_gpus
def test_two_gpus_fused_optimizer_matches_torch_sgd():
    p = _pool(2)
    ref = p.run(gc.ddp_train_fused, fused=False, torch_sgd=True, timeout=TIMEOUT)
    got = p.run(gc.ddp_train_fused, fused=True, timeout=TIMEOUT)
    for r in range(2):
        for a, b in zip(ref[r][0], got[r][0]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@two_gpus
def test_two_gpus_backend_routes_cuda_to_nccl():
    for ok, gathered, cpu_ok, made in _pool(2, "fastallreduce").run(gc.backend_on_cuda, timeout=TIMEOUT):
        assert ok and cpu_ok and made and gathered == [[0.0] * 3, [1.0] * 3]

