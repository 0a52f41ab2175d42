"""``bench allreduce --netns-hosts H``: the allreduce benchmark on H namespaced hosts.

Builds H separate hosts on this machine (:mod:`.netns_hosts`: own network, hostname, IPC and
/dev/shm each, joined by veth links; needs root), starts one torchrun per host that runs this
same benchmark in its launched mode (``--ranks-per-host`` ranks each, the real topology, no
simulated host ids), streams rank 0's tables to stdout and always tears the hosts down.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Optional, Sequence


def inner_argv(argv: Sequence[str], out_dir: str) -> list[str]:
    """The ranks' arguments: ``argv`` with an absolute --out and no progress bar. The ranks keep
    --netns-hosts: under torchrun it only names where they run (for the tables' notes)."""
    out, i = [], 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        name = a.split("=", 1)[0]
        if name == "--out":
            i += 1 if "=" in a else 2
            continue
        out.append(a)
        i += 1
    return out + ["--out", out_dir, "--no-progress"]


def _stream(path: str, pos: int) -> int:
    """Prints what was appended to ``path`` since ``pos``; returns the new position."""
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            chunk = f.read()
    except FileNotFoundError:
        return pos
    if chunk:
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()
    return pos + len(chunk)


def run(args: argparse.Namespace, argv: Sequence[str], job_timeout: Optional[float] = None) -> int:
    """Runs the benchmark of ``argv`` on ``args.netns_hosts`` hosts of ``args.ranks_per_host`` ranks."""
    from . import netns_hosts as nh

    if args.netns_hosts < 2 or args.ranks_per_host < 1:
        print("--netns-hosts needs at least 2 hosts and --ranks-per-host at least 1", file=sys.stderr)
        return 2
    if args.hosts or args.nranks:
        print("--netns-hosts sets the world (hosts x --ranks-per-host): leave --hosts and -n out", file=sys.stderr)
        return 2
    why = nh.unavailable()
    if why:
        print(f"--netns-hosts: {why}", file=sys.stderr)
        return 2
    nh.sweep_stale()
    layout = [args.ranks_per_host] * args.netns_hosts
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    timeout = job_timeout if job_timeout is not None else 4 * args.timeout + 600
    print(f"# {args.netns_hosts} namespaced hosts x {args.ranks_per_host} ranks (veth links, one torchrun per "
          f"host); rank 0's output follows", flush=True)
    with tempfile.TemporaryDirectory(prefix="far-netns-bench-") as logs, nh.NetnsHosts(layout, log_dir=logs) as hosts:
        job = hosts.torchrun(["-m", "fastallreduce", "bench", "allreduce", *inner_argv(argv, out_dir)])
        deadline, pos = time.monotonic() + timeout, 0
        while time.monotonic() < deadline and any(p.poll() is None for p in job.procs):
            pos = _stream(job.logs[0], pos)
            time.sleep(0.5)
        codes = job.wait(timeout=max(0.0, deadline - time.monotonic()))
        _stream(job.logs[0], pos)
        if codes != [0] * len(layout):
            print(f"# torchrun exit codes per host: {codes}" + (" (timed out)" if None in codes else ""))
            print(job.output(), file=sys.stderr)
            return 1
    return 0
