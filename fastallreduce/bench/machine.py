"""Describes the machine and the build, for benchmark reports and ``python -m fastallreduce info``."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any, Optional

import torch


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform.processor())."""
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD-relevant flags of the CPU (avx2, avx512f, ...)."""
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return sorted(f for f in flags if f.startswith(("avx", "sse4", "fma", "amx")))
    return []


def memory_bytes() -> Optional[int]:
    """Total physical memory in bytes (MemTotal), or None when unknown."""
    text = _read("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def numa_nodes() -> list[dict]:
    """NUMA nodes with their CPU lists (empty when /sys has none)."""
    base = "/sys/devices/system/node"
    nodes = []
    try:
        names = sorted(n for n in os.listdir(base) if n.startswith("node") and n[4:].isdigit())
    except OSError:
        return nodes
    for n in names:
        cpus = (_read(os.path.join(base, n, "cpulist")) or "").strip()
        nodes.append({"node": int(n[4:]), "cpus": cpus})
    return nodes


def shm_space() -> Optional[dict]:
    """Size and free space of /dev/shm, where the shared-memory algorithms put their segments."""
    try:
        u = shutil.disk_usage("/dev/shm")
    except OSError:
        return None
    return {"total_bytes": u.total, "free_bytes": u.free}


def cuda_arch_of_extension() -> Optional[list[str]]:
    """The GPU architectures compiled into fastallreduce._C (via cuobjdump), or None if unknown."""
    try:
        from .. import _C
    except ImportError:
        return None
    if not getattr(_C, "with_cuda", False):
        return []
    archs = getattr(_C, "cuda_arch_list", None)
    if archs:
        return list(archs)
    tool = shutil.which("cuobjdump") or (os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"))
    if not tool or not os.path.exists(tool):
        return None
    found = set()
    for flag in ("--list-elf", "--list-ptx"):
        try:
            out = subprocess.run([tool, flag, _C.__file__], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for tok in out.replace(".", " ").split():
            if tok.startswith(("sm_", "compute_")):
                found.add(tok if flag == "--list-elf" else tok + " (PTX)")
    return sorted(found)


def gpus() -> list[dict]:
    """Visible CUDA devices with name, memory and peer access to the others."""
    if not torch.cuda.is_available():
        return []
    out = []
    n = torch.cuda.device_count()
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        peers = [j for j in range(n) if j != i and torch.cuda.can_device_access_peer(i, j)]
        out.append({"index": i, "name": p.name, "memory_bytes": p.total_memory,
                    "capability": f"{p.major}.{p.minor}", "peer_access": peers})
    return out


def git_commit() -> Optional[str]:
    """The commit of the source tree fastallreduce was imported from, when it is a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        r = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, timeout=10)
        if r.returncode == 0:
            dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return r.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def describe(probe_cuda_arch: bool = False) -> dict[str, Any]:
    """Everything a report needs to say on which machine and build its numbers were measured."""
    import fastallreduce as far
    from .. import _C

    mem = memory_bytes()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    info: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "memory_bytes": mem,
        "numa_nodes": numa_nodes(),
        "dev_shm": shm_space(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "fastallreduce": far.__version__,
        "fastallreduce_path": os.path.dirname(far.__file__),
        "git_commit": git_commit(),
        "built_with_cuda": bool(getattr(_C, "with_cuda", False)),
        "gpus": gpus(),
    }
    if probe_cuda_arch:
        info["cuda_arch_list"] = cuda_arch_of_extension()
    return info


def describe_markdown(info: dict[str, Any]) -> str:
    """A Markdown bullet list of :func:`describe`'s result."""
    gib = (info["memory_bytes"] or 0) / 2**30
    lines = [
        f"- CPU: {info['cpu_model']} — {info['logical_cpus']} logical CPUs ({info['usable_cpus']} usable), "
        f"flags {' '.join(info['cpu_flags']) or 'n/a'}",
        f"- Memory: {gib:.1f} GiB; /dev/shm: "
        + (f"{info['dev_shm']['total_bytes'] / 2**30:.1f} GiB" if info.get("dev_shm") else "n/a"),
        f"- NUMA nodes: {len(info['numa_nodes']) or 1}",
        f"- OS: {info['os']}; Python {info['python']}",
        f"- torch {info['torch']} (CUDA {info['torch_cuda'] or 'none'}); torch threads {info['torch_threads']}",
        f"- fastallreduce {info['fastallreduce']} (commit {info['git_commit'] or 'n/a'}), "
        f"built with CUDA: {info['built_with_cuda']}"
        + (f", architectures {', '.join(info['cuda_arch_list'])}" if info.get("cuda_arch_list") else ""),
        "- GPUs: " + (", ".join(f"{g['name']} ({g['memory_bytes'] / 2**30:.0f} GiB)" for g in info["gpus"])
                      if info["gpus"] else "none visible"),
        f"- Measured: {info['date_utc']} UTC on {info['hostname']}",
    ]
    return "\n".join(lines)


def copy_bandwidth(nbytes: int = 256 * 2**20, reps: int = 7, threads: Optional[int] = None) -> dict[str, float]:
    """Median bandwidth of ``dst.copy_(src)`` for one large float32 buffer in this process.

    Returned GB/s count the bytes copied (each byte is read once and written once, so the memory
    traffic is twice that). ``threads`` sets torch's intra-op threads for the measurement.
    """
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        n = max(1, nbytes // 4)
        src = torch.ones(n, dtype=torch.float32)
        dst = torch.empty_like(src)
        dst.copy_(src)  # first touch: page faults are not what we measure
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
        times.sort()
        t = times[len(times) // 2]
        return {"bytes": n * 4, "time_s": t, "GBps": n * 4 / t / 1e9, "threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(old)
