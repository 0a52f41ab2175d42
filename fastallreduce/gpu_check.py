"""The prepared GPU check: build, every GPU test, and the fused-SGD table, each step under its own
timeout, within 6 minutes on one bare GPU machine (16 cores), the build included; a rerun on the same
machine reuses the build (ninja) and takes under 3.

    python3 -m fastallreduce.gpu_check              # a bare checkout: builds first
    python3 -m fastallreduce check --gpu            # the same
    python3 -m fastallreduce.gpu_check --dry-run    # lists the steps, runs none (CI runs this)

The package imports without its compiled extension, and this module imports only the standard
library and torch, so the check runs before ``fastallreduce._C`` exists.

Steps: the build (``setup.py build_ext --inplace``: the CUDA sources for the visible GPU's
architecture only, every core, incremental); the GPU tests that one GPU can run (the NCCL paths at
world size 1: stream ordering on a non-default stream, the async Future, the hooks and the fused
update on CUDA buckets, the optimizer kernels against torch's fused SGD); those that need two or
more GPUs (the Communicator against NCCL ``dist.all_reduce`` in the same processes, DDP hook parity
on NCCL: NCCL refuses two ranks on one GPU); and the table of fused SGD against torch's fused SGD
on ResNet-50's parameter shapes (the step captured in a CUDA graph and timed by CUDA events, the
launch overhead of the eager step on its own row, and the share of the device-to-device copy
bandwidth at 20 bytes per parameter). Without a GPU every step is listed as skipped, with the reason.
It needs, on the GPU machine, what a CUDA torch brings (setuptools, ninja, nvcc) plus pytest and
pytest-timeout; CuPy is optional.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The whole check's budget in seconds (the sum of the step timeouts stays below it).
BUDGET_S = 360
GPU_TESTS = "tests"  # every test marked `gpu` (tests/test_gpu.py, the CUDA tests of tests/test_optim.py)


@dataclass
class Step:
    """One step: a command run from the checkout's root under its own timeout."""

    name: str
    argv: List[str]
    timeout_s: int
    min_gpus: int = 1
    status: str = "pending"
    seconds: float = 0.0
    detail: str = ""
    output: str = field(default="", repr=False)


def steps(json_path: str) -> List[Step]:
    """The check's steps, in order (their timeouts sum to at most :data:`BUDGET_S`)."""
    py = sys.executable
    pytest = [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu", GPU_TESTS]
    return [
        Step("build", [py, "setup.py", "-q", "build_ext", "--inplace"], 200),
        Step("GPU tests, one GPU (world size 1)", pytest + ["-k", "not two_gpus"], 80),
        Step("GPU tests, two or more GPUs", pytest + ["-k", "two_gpus"], 40, min_gpus=2),
        Step("fused SGD vs torch fused SGD", [py, "-m", "fastallreduce.bench.gpu_sgd", "--json", json_path], 40),
    ]


def build_env(env: dict) -> dict:
    """The build's environment: the CUDA sources on, compiled for the visible GPUs' architectures
    only (not the generic list), on every core."""
    env = dict(env, FASTALLREDUCE_CUDA="1", MAX_JOBS=str(os.cpu_count() or 1))
    if not env.get("TORCH_CUDA_ARCH_LIST"):
        import torch

        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        env["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a}.{b}" for a, b in caps)
    if not env.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
        env["CUDA_HOME"] = "/usr/local/cuda"  # torch would guess it from a wrapper nvcc's directory
    return env


def gpu_count() -> tuple:
    """(number of visible CUDA GPUs, why none when 0)."""
    try:
        import torch
    except ImportError as e:
        return 0, f"torch does not import ({e})"
    if torch.version.cuda is None:
        return 0, f"torch {torch.__version__} is a CPU-only build"
    n = torch.cuda.device_count()
    return (n, "") if n else (0, "no CUDA GPU visible (torch.cuda.device_count() == 0)")


def _skip_reason(step: Step, n: int, why: str, failed_build: bool) -> str:
    if n == 0:
        return why
    if n < step.min_gpus:
        return f"needs {step.min_gpus} GPUs, {n} visible (NCCL refuses two ranks on one GPU)"
    if failed_build:
        return "the build failed"
    if step.name == "build" and not os.path.exists(os.path.join(ROOT, "setup.py")):
        return "not a source checkout (no setup.py): the installed build is used"
    return ""


def _run(step: Step, env: dict) -> None:
    t0 = time.monotonic()
    try:
        p = subprocess.run(step.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=step.timeout_s)
        step.output = p.stdout
        step.status = "passed" if p.returncode == 0 else "FAILED"
        lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
        step.detail = lines[-1][:100] if lines else f"exit code {p.returncode}"
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        step.output = out if isinstance(out, str) else out.decode(errors="replace")
        step.status, step.detail = "FAILED", f"timed out after {step.timeout_s} s"
    step.seconds = time.monotonic() - t0


def sgd_table(rows: List[dict]) -> str:
    """The fused-SGD table from the benchmark's JSON rows."""
    head = f"{'implementation':<34} {'median ms':>9} {'GB/s':>7} {'of copy':>8} {'time/torch fused':>16}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['impl']:<34} {r['median_ms']:>9.3f} {r['gb_per_s']:>7.0f} {r['share_of_copy']:>7.0%} "
                     f"{r['ratio_vs_torch_fused']:>16.2f}")
    return "\n".join(lines)


def run(dry_run: bool = False, out=sys.stdout) -> int:
    """Runs (or, with ``dry_run`` or without a GPU, lists) the steps; prints the report.
    Returns 0 unless a step that ran failed."""
    n, why = gpu_count()
    json_path = os.path.join(tempfile.gettempdir(), f"fastallreduce_gpu_check_{os.getpid()}.json")
    todo = steps(json_path)
    if dry_run:
        print("fastallreduce GPU check (--dry-run: nothing is run)", file=out)
    elif n == 0:
        print(f"fastallreduce GPU check: {why}; no GPU step can run here", file=out)
    else:
        import torch

        print(f"fastallreduce GPU check: {n} GPU(s): {torch.cuda.get_device_name(0)}", file=out)
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    failed_build = False
    for s in todo:
        reason = _skip_reason(s, n, why, failed_build)
        if dry_run:
            s.status = "skipped"
            one, more = ("runs" if g >= s.min_gpus else "skips" for g in (1, 2))
            s.detail = (f"--dry-run; with 1 GPU it {one}, with 2+ {more}; here it would "
                        f"{'skip: ' + reason if reason else 'run'}: {' '.join(s.argv[1:])}")
        elif reason:
            s.status, s.detail = "skipped", reason
        else:
            _run(s, build_env(env) if s.name == "build" else env)
            failed_build = s.name == "build" and s.status != "passed"
    width = max(len(s.name) for s in todo)
    print(f"\n{'step':<{width}}  {'status':<7} {'timeout':>7} {'seconds':>7}  detail", file=out)
    for s in todo:
        secs = f"{s.seconds:7.1f}" if s.seconds else " " * 7
        print(f"{s.name:<{width}}  {s.status:<7} {s.timeout_s:>6}s {secs}  {s.detail}", file=out)
    print(f"(step timeouts sum to {sum(s.timeout_s for s in todo)} s of the {BUDGET_S} s budget)", file=out)
    for s in todo:
        if s.status == "FAILED":
            print(f"\n--- output of '{s.name}' (last 3000 characters) ---\n{s.output[-3000:]}", file=out)
    if os.path.exists(json_path):
        with open(json_path, encoding="utf-8") as f:
            doc = json.load(f)
        os.unlink(json_path)
        print(f"\n{doc['title']}\n{sgd_table(doc['rows'])}\n{doc['verdict']}", file=out)
    return 1 if any(s.status == "FAILED" for s in todo) else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``check [--gpu] [--dry-run]``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="fastallreduce check", description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="the GPU check (the only check so far; the default)")
    ap.add_argument("--dry-run", action="store_true", help="list the steps and why each would be skipped; run none")
    args = ap.parse_args(argv)
    return run(dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
