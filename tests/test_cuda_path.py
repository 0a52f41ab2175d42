"""What of the GPU paths (issue 16) runs without a GPU: construction on a CUDA build without a GPU,
the NCCL group's factory, arrays through DLPack (NumPy), the choice of the CUDA SGD path and its
torch operations (on CPU tensors), the backend, and the GPU check's dry run."""
import os
import shutil
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import fastallreduce as far
import gpu_cases as gc
from fastallreduce import _C, _groups, communicator
from fastallreduce.optim import SGD
from fastallreduce.optim import cuda as sgd_cuda

TIMEOUT = 120
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_communicator_constructs_without_gpu(pool):
    for nccl_available, made, values, has_gpu in pool(2).run(gc.construct_without_gpu, timeout=TIMEOUT):
        assert values == [2.0] * 3
        assert not made  # the NCCL group is made at the first CUDA call, never at construction
        if not has_gpu:
            assert nccl_available == dist.is_nccl_available()


def test_nccl_factory_sets_error_handling_for_its_group_only(monkeypatch):
    # ProcessGroupNCCL reads the variable through torch's environment accessor: that is what the
    # fake reads. The write goes through torch's accessor too (its lock), never os.environ.
    seen = {}
    key = "TORCH_NCCL_ASYNC_ERROR_HANDLING"

    class FakeNCCL:
        class Options:
            _timeout = None
            group_name = ""

        def __init__(self, store, rank, size, opts):
            seen.update(env=_C._get_torch_env(key), timeout=opts._timeout, args=(store, rank, size),
                        name=opts.group_name, os_environ=os.environ.get(key))

    monkeypatch.setattr(dist, "ProcessGroupNCCL", FakeNCCL, raising=False)
    monkeypatch.setenv(key, "3")
    _groups.nccl_group("store", 1, 2, 1500)
    assert seen == {"env": "2", "timeout": timedelta(milliseconds=1500), "args": ("store", 1, 2),
                    "name": "fastallreduce", "os_environ": "3"}
    assert _C._get_torch_env(key) == "3" and os.environ[key] == "3"  # the user's setting, restored
    monkeypatch.delenv(key)
    _groups.nccl_group("store", 0, 1, 10)
    assert seen["env"] == "2"
    assert _C._get_torch_env(key) is None and key not in os.environ


@pytest.mark.parametrize("result,kind,words", [(0, None, ""), (1, "timeout", "did not complete"),
                                               (2, "fault", "communication error"), (100, "fault", "result 100")])
def test_nccl_work_results_map_to_their_errors(result, kind, words):
    # Issue 25 (e): torch's NCCL watchdog reports COMM_ERROR (2) and others besides TIMEOUT (1);
    # only a timeout is a CommTimeoutError, the rest CommError (the record's kind picks the class).
    record = _C._nccl_fault_record(result, 3, "allreduce of 8 x float32")
    if kind is None:
        assert record == ""
    else:
        k, msg = record.split("|", 1)
        assert k == kind and words in msg and msg.startswith("fastallreduce: rank 3: allreduce of 8 x float32")


_LOCK_ORDER_SCRIPT = r"""
import threading, time, datetime
import torch.distributed as dist
import fastallreduce as far
from fastallreduce import _C, _groups, communicator

made = threading.Event()

def slow_factory(store, rank, size, timeout_ms, name="x"):
    made.set()
    time.sleep(0.5)  # the GIL is free meanwhile: the main thread reads nccl_made
    return _groups.gloo_group(store, rank, size, timeout_ms)

_groups.nccl_group = slow_factory
communicator.dist.is_nccl_available = lambda: True
store = dist.HashStore()
dist.init_process_group("gloo", store=store, rank=0, world_size=1)
comm = far.Communicator()
t = threading.Thread(target=comm._c._make_nccl_group)
t.start()
made.wait(10)
reads = 0
deadline = time.monotonic() + 1.0
while time.monotonic() < deadline:
    reads += 1
    comm._c.nccl_made  # takes the engine's NCCL mutex while holding the GIL
t.join(10)
assert not t.is_alive() and comm._c.nccl_made, "the group was not made"
comm.close()
dist.destroy_process_group()
print("ok", reads)
"""


def test_nccl_group_creation_races_nccl_made_without_deadlock():
    # Issue 25 (f): making the group held the engine's NCCL mutex while the factory waited for the
    # GIL, and nccl_made held the GIL while waiting for that mutex: a deadlock (the timeout here).
    p = subprocess.run([sys.executable, "-c", _LOCK_ORDER_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stdout + p.stderr


def test_gpu_check_runs_on_a_checkout_without_the_extension(tmp_path):
    # Issue 25 (a): `python3 -m fastallreduce.gpu_check` must start before _C is built (it builds
    # it); the package imports without it and says how to build when a name needs it. The copy
    # has no _C, and the venv's editable-install finder (which maps the package to this
    # checkout) is taken out so that the copy is what imports.
    shutil.copytree(os.path.join(ROOT, "fastallreduce"), tmp_path / "fastallreduce",
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    bare = ("import sys, runpy; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
            "sys.path.insert(0, {!r}); ").format(str(tmp_path))
    run = lambda code: subprocess.run([sys.executable, "-c", bare + code], cwd=tmp_path, capture_output=True,  # noqa: E731
                                      text=True, timeout=TIMEOUT)
    p = run("sys.argv = ['gpu_check', '--dry-run']; runpy.run_module('fastallreduce.gpu_check', run_name='__main__')")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "build" in p.stdout and "--dry-run" in p.stdout
    p = run("import fastallreduce as f; assert f.__file__.startswith({!r}), f.__file__; f.Communicator".format(
        str(tmp_path)))
    assert p.returncode != 0 and "ImportError" in p.stderr and "pip install --no-build-isolation -e ." in p.stderr, \
        p.stderr


def test_numpy_arrays(pool):
    np = pytest.importorskip("numpy")
    del np
    res = pool(2).run(gc.numpy_arrays, timeout=TIMEOUT)
    for rank, (in_place, a, out_is_out, out, fut_type, got, gathered, errors) in enumerate(res):
        assert in_place and a == [2 * i + 1.0 for i in range(5)]
        assert out_is_out and out == a
        assert fut_type == "ArrayFuture" and got == [3, 3, 3]
        assert gathered == [0.0, 0.0, 1.0, 1.0]
        (ro_type, ro_msg), (list_type, list_msg) = errors
        assert ro_type == "ValueError" and "read-only" in ro_msg, errors
        assert list_type == "TypeError" and "DLPack" in list_msg, errors


def test_cuda_sgd_path_choice(monkeypatch):
    monkeypatch.delenv(sgd_cuda.ENV, raising=False)
    assert sgd_cuda.cuda_sgd_path() == "torch"  # established correctness first
    assert SGD([torch.zeros(2, requires_grad=True)]).cuda_sgd == "torch"
    monkeypatch.setenv(sgd_cuda.ENV, "bogus")
    with pytest.raises(ValueError, match="FASTALLREDUCE_CUDA_SGD='bogus'"):
        SGD([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match="cuda_sgd='fast'"):
        sgd_cuda.cuda_sgd_path("fast")
    monkeypatch.setenv(sgd_cuda.ENV, "Kernel")
    if sgd_cuda.HAS_KERNEL:
        assert SGD([torch.zeros(2, requires_grad=True)]).cuda_sgd == "kernel"
    else:
        with pytest.raises(RuntimeError, match="no CUDA sources"):
            SGD([torch.zeros(2, requires_grad=True)])
    assert SGD([torch.zeros(2, requires_grad=True)], cuda_sgd="torch").cuda_sgd == "torch"


def _tensors(seed, shapes, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


@pytest.mark.parametrize("paper", [False, True])
@pytest.mark.parametrize("nesterov", [False, True])
def test_foreach_update_matches_cpu_kernel(paper, nesterov):
    """The foreach update (the default CUDA path of the lr-in-momentum form) against the CPU
    kernel, on CPU tensors, across a first step, an lr change (momentum correction) and maximize."""
    shapes = [(7,), (33, 5), (1,)]
    hp = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=nesterov, lr_in_momentum=paper)
    ps_k = [p.requires_grad_() for p in _tensors(0, shapes)]
    ps_f = [p.detach().clone() for p in ps_k]
    opt = SGD(ps_k, **hp)
    bufs = [torch.empty_like(p) for p in ps_f]
    lr_held = None
    for step, lr in enumerate((0.1, 0.1, 0.2, 0.2)):
        grads = _tensors(step + 1, shapes)
        for p, g in zip(ps_k, grads):
            p.grad = g.clone()
        opt.param_groups[0]["lr"] = lr
        opt.step()
        scale = lr / lr_held if paper and lr_held else 1.0
        SGD._torch_update(ps_f, grads, bufs, [step == 0] * len(shapes), scale, lr, 0.9, 0.0, 1e-3, nesterov,
                          False, paper)
        lr_held = lr
    for a, b in zip(ps_k, ps_f):
        torch.testing.assert_close(b, a.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_torch_fused_step_matches_torch_fused_sgd(momentum):
    """The default CUDA path of torch's form (torch's fused SGD, new and continuing buffers in
    separate calls), on CPU tensors, against torch.optim.SGD; a parameter that first gets a
    gradient at step 2 starts its buffer then (torch.optim.SGD(fused=True) itself raises a
    TypeError there in torch 2.14: it passes the missing buffer to the kernel)."""
    shapes = [(9,), (4, 4), (2,)]
    hp = dict(lr=0.05, momentum=momentum, dampening=0.0, weight_decay=1e-4, nesterov=False, maximize=False)
    ref = [p.requires_grad_() for p in _tensors(3, shapes)]
    mine = [p.detach().clone() for p in ref]
    opt = torch.optim.SGD(ref, foreach=False, **hp)
    bufs = [torch.empty_like(p) for p in mine]
    started = [False] * len(shapes)
    for step in range(3):
        grads = _tensors(10 + step, shapes)
        live = [i for i in range(len(shapes)) if step > 0 or i != 2]  # the last one waits a step
        for i, p in enumerate(ref):
            p.grad = grads[i].clone() if i in live else None
        opt.step()
        left = sgd_cuda.torch_fused_step([mine[i] for i in live], [grads[i] for i in live],
                                         [bufs[i] for i in live], [not started[i] for i in live], hp["lr"],
                                         momentum, 0.0, hp["weight_decay"], False, False)
        assert left == []
        for i in live:
            started[i] = True
    for a, b in zip(ref, mine):
        torch.testing.assert_close(b, a.detach(), rtol=1e-6, atol=1e-7)


def test_backend_makes_no_nccl_group_until_cuda():
    store = dist.HashStore()
    b = far.backend.create_backend(store, 0, 1, timedelta(seconds=30))
    try:
        assert not b.nccl_made
    finally:
        b.shutdown()


@pytest.mark.parametrize("argv", [[sys.executable, "-m", "fastallreduce", "check", "--gpu", "--dry-run"],
                                  [sys.executable, "-m", "fastallreduce.gpu_check", "--dry-run"],
                                  [sys.executable, os.path.join("fastallreduce", "gpu_check.py"), "--dry-run"]])
def test_gpu_check_dry_run(argv):
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stderr
    for name in ("build", "GPU tests, one GPU", "GPU tests, two or more GPUs", "fused SGD vs torch fused SGD"):
        line = next(ln for ln in p.stdout.splitlines() if ln.startswith(name))
        assert "skipped" in line and "--dry-run" in line, line
        assert ("with 1 GPU it skips, with 2+ runs" if "two or more" in name else "with 1 GPU it runs, with 2+ runs") \
            in line, line
    assert "360 s of the 360 s budget" in p.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without a GPU")
def test_gpu_check_without_gpu_says_so():
    p = subprocess.run([sys.executable, "-m", "fastallreduce", "check", "--gpu"], cwd=ROOT, capture_output=True,
                       text=True, timeout=TIMEOUT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stderr
    assert "no GPU step can run here" in p.stdout
    rows = [ln for ln in p.stdout.splitlines() if "skipped" in ln]
    assert len(rows) == 4 and all("no CUDA GPU" in r or "CPU-only" in r for r in rows), p.stdout
