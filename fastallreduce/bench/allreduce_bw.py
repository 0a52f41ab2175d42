"""Allreduce bandwidth in the nccl-tests format: fastallreduce's algorithms against torch.distributed.

    python -m fastallreduce bench allreduce -b 4K -e 64M -f 4 -n 2,4,8 -w 3 -i 10

For each world size it starts that many local rank processes (:class:`~fastallreduce.launch.RankPool`,
gloo on loopback) and, in the same processes and for every size, measures torch.distributed's
``all_reduce`` on a gloo group — the reference — and each requested fastallreduce algorithm, out of
place (``out=``) and in place. ``-a ...,backend`` adds ``torch.distributed.all_reduce`` on a group of
the "fastallreduce" torch.distributed backend (compared with the Communicator's ``auto``).

Launched by torchrun (RANK, WORLD_SIZE, MASTER_ADDR set), it runs on the launched ranks instead of
starting its own: they join with ``init_process_group(--dist-backend)`` and rank 0 prints::

    python -m torch.distributed.run --nproc-per-node 2 -m fastallreduce bench allreduce --dist-backend fastallreduce

Columns, as in nccl-tests: size (bytes), count (elements), type, redop; then for out-of-place and
in-place: time (µs), algbw = size / time (GB/s), busbw = algbw · 2(p−1)/p (GB/s), #wrong. The time
of one iteration is the slowest rank's; the table shows the median over the timed iterations.
Ratio columns give gloo's time divided by ours (above 1: we are faster).

#wrong is real: every rank's input is an integer-valued pattern whose reduction is known exactly,
so each checked result is compared element by element with the exact answer (``avg`` within
two ulps, since the division rounds). By default every iteration is checked (outside the timed
region); ``-c 0`` checks one extra iteration after the timed ones. For out-of-place runs the
input is also checked to be unchanged.

With ``--netns-hosts H`` it builds H namespaced hosts on this machine (root; see
:mod:`.netns_hosts`) and runs the launched mode there, ``--ranks-per-host`` ranks per host::

    python -m fastallreduce bench allreduce --netns-hosts 2 --ranks-per-host 2 -a hierarchical --rounds 3

``--rounds R`` measures every size in R blocks per implementation, alternating their order.

Outputs: the tables on stdout, ``allreduce_bw.json`` and ``allreduce_bw.png`` (busbw against size,
one panel per world size) in the output directory, a progress bar on stderr.

This module is the command line; the benchmark itself is in :mod:`.allreduce_harness` (the
ranks' code and the driver), :mod:`.allreduce_check` (inputs and checks) and
:mod:`.allreduce_report` (tables, JSON layout, plot).
"""
from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import Optional, Sequence

import torch

from ..launch import LaunchedRanks, launched_by_torchrun
# The harness, inputs and report, re-exported: this module is the benchmark's public face
# (``fastallreduce.bench.allreduce_bw.run`` etc.), whichever file a name lives in.
from .allreduce_check import (BACKEND, DIST_IMPLS, DTYPES, OPS, REFERENCE, count_wrong, tile,  # noqa: F401
                              expected_period, make_input)
from .allreduce_harness import DEFAULT_NRANKS, pg_timeout_s, run, sizes_from  # noqa: F401
from .allreduce_report import format_tables, human_size, plot, total_wrong  # noqa: F401

__all__ = ["main", "build_parser", "parse_size", "run", "sizes_from", "format_tables", "plot", "total_wrong",
           "human_size", "make_input", "expected_period", "count_wrong", "DTYPES", "OPS", "REFERENCE", "BACKEND",
           "DIST_IMPLS", "DEFAULT_ALGORITHMS"]

# Defaults: the README's main job runs this with no arguments; it must finish in a few minutes on
# 2 cores (2 ranks, 4 KiB .. 256 MiB by 4x, gloo + every available algorithm).
DEFAULT_BEGIN = "4K"
DEFAULT_END = "256M"
DEFAULT_FACTOR = 4
DEFAULT_WARMUP = 3
DEFAULT_ITERS = 10
DEFAULT_ALGORITHMS = "auto,ring,halving_doubling,shm,hierarchical"


def parse_size(text: str) -> int:
    """'4K' -> 4096, '256M', '1G', '8' (binary multiples, as nccl-tests)."""
    t = text.strip().upper().rstrip("B")
    mult = 1
    for suffix, m in (("K", 2**10), ("M", 2**20), ("G", 2**30)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        value = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 8, 4K, 64M, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"world sizes must be >= 1: {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastallreduce bench allreduce",
        description="Allreduce bandwidth (nccl-tests format): fastallreduce algorithms vs torch.distributed gloo, "
                    "measured in the same processes.")
    p.add_argument("-b", "--minbytes", type=parse_size, default=parse_size(DEFAULT_BEGIN),
                   help=f"smallest message size (default {DEFAULT_BEGIN})")
    p.add_argument("-e", "--maxbytes", type=parse_size, default=parse_size(DEFAULT_END),
                   help=f"largest message size (default {DEFAULT_END})")
    p.add_argument("-f", "--stepfactor", type=int, default=DEFAULT_FACTOR,
                   help=f"multiply the size by this factor each step (default {DEFAULT_FACTOR})")
    p.add_argument("-n", "--nranks", type=_int_list, default=None,
                   help=f"world size(s), comma-separated, run one after the other (default {DEFAULT_NRANKS}; "
                        "e.g. 2,4,8); under torchrun: the launched world size")
    p.add_argument("-w", "--warmup_iters", type=int, default=DEFAULT_WARMUP,
                   help=f"untimed iterations per size and mode (default {DEFAULT_WARMUP})")
    p.add_argument("-i", "--iters", type=int, default=DEFAULT_ITERS,
                   help=f"timed iterations per size and mode (default {DEFAULT_ITERS})")
    p.add_argument("-d", "--datatype", default="float32", choices=sorted(DTYPES), help="element type")
    p.add_argument("-o", "--op", default="sum", choices=OPS, help="reduction")
    p.add_argument("-c", "--check", type=int, default=1, choices=(0, 1),
                   help="1: check every iteration (default); 0: check one extra iteration after the timed ones")
    p.add_argument("-a", "--algorithms", default=DEFAULT_ALGORITHMS,
                   help="comma-separated fastallreduce algorithms, and/or 'backend' (torch.distributed.all_reduce "
                        "on a group of the fastallreduce backend), 'registered' (auto on a tensor in registered "
                        "memory: zero-copy in place), 'deepspeed' (DeepSpeed's CPU allreduce, an anchor, when "
                        "installed); ones that cannot run here are skipped with a note "
                        f"(default {DEFAULT_ALGORITHMS})")
    p.add_argument("--dist-backend", default="gloo",
                   help="torch.distributed backend of the ranks' default group, e.g. fastallreduce (default gloo); "
                        "the reference is measured on a gloo group either way")
    p.add_argument("--hosts", type=int, default=0,
                   help="split the ranks into this many simulated hosts (consecutive blocks) for fastallreduce's "
                        "topology, e.g. to measure 'hierarchical' on one machine (default 0: the real topology)")
    p.add_argument("--netns-hosts", type=int, default=0,
                   help="run on this many namespaced hosts made on this machine (separate network, hostname, IPC "
                        "and /dev/shm each, veth links; needs root): one torchrun per host, the real topology")
    p.add_argument("--ranks-per-host", type=int, default=2, help="ranks on each namespaced host (default 2)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure each size in this many blocks per implementation, alternating their order "
                        "(default 1)")
    p.add_argument("--no-reference", action="store_true",
                   help="do not measure torch.distributed gloo (no ratio columns)")
    p.add_argument("--out", default="results", help="output directory for JSON and PNG (default results/)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds one size of one implementation may take before the run is aborted "
                        "(under torchrun: the process group's timeout)")
    return p


def _main_launched(args: argparse.Namespace) -> int:
    """Under torchrun: join the launched ranks; rank 0 drives the run and prints, the others serve it."""
    import torch.distributed as dist

    torch.set_num_threads(1)  # as the spawned ranks: the ranks share the cores
    dist.init_process_group(args.dist_backend, timeout=timedelta(seconds=pg_timeout_s(args)))
    try:
        with LaunchedRanks() as ranks:
            if not ranks.is_driver:
                ranks.serve()
                return 0
            return 0 if total_wrong(run(args, launched=ranks)) == 0 else 1
    finally:
        dist.destroy_process_group()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns 0 when every checked result was right, 1 otherwise.

    Started by torchrun (RANK, WORLD_SIZE and MASTER_ADDR set), it runs on the launched ranks;
    otherwise it starts local rank processes for each world size of ``-n``.
    """
    args = build_parser().parse_args(argv)
    if launched_by_torchrun():  # --netns-hosts there only says where the launched ranks are
        return _main_launched(args)
    if args.netns_hosts:
        from . import allreduce_netns

        return allreduce_netns.run(args, sys.argv[1:] if argv is None else argv)
    return 0 if total_wrong(run(args)) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
