"""The allreduce benchmark's driver; what runs on the ranks is :mod:`.allreduce_ranks` (the
groups and communicators of each implementation, a probe that says which can run, the timed
loops, and the paired loop that times the backend against the Communicator call for call).

The driver (:func:`run`) starts the ranks for each world size (or uses a torchrun job's), asks
each implementation for each size, takes the slowest rank's time per iteration and the median
over iterations, and returns one JSON document; :mod:`.allreduce_report` prints and plots it.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from typing import Any, Iterator, Optional, Union

import torch

from ..launch import LaunchedRanks, RankPool
from . import allreduce_ranks
from .allreduce_check import BACKEND, DIST_IMPLS, DTYPES, REFERENCE, REGISTERED
from .allreduce_report import format_tables, human_size, plot
from .output import save_outputs

#: World size when ``-n`` is not given (and the job was not launched by torchrun).
DEFAULT_NRANKS = 2


def sizes_from(minbytes: int, maxbytes: int, factor: int) -> list[int]:
    """Byte sizes minbytes, minbytes*factor, ... up to maxbytes (inclusive)."""
    if factor < 2:
        raise ValueError("the step factor must be at least 2")
    out, s = [], minbytes
    while s <= maxbytes:
        out.append(s)
        s *= factor
    return out


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
def _summarise(per_rank: list[dict], nbytes: int, world: int) -> dict[str, Any]:
    """Per iteration the slowest rank's time; then the median over iterations."""
    out: dict[str, Any] = {}
    for mode in ("oop", "ip"):
        iters = zip(*(r[mode]["times"] for r in per_rank))
        slowest = [max(ts) for ts in iters]
        t = statistics.median(slowest) if slowest else float("nan")
        algbw = nbytes / t / 1e9 if t > 0 else float("nan")
        busbw = algbw * (2 * (world - 1) / world) if world > 1 else 0.0
        out[mode] = {
            "time_us": t * 1e6, "algbw_GBps": algbw, "busbw_GBps": busbw,
            "wrong": sum(r[mode]["wrong"] for r in per_rank),
            "iter_times_us": [s * 1e6 for s in slowest],
        }
        algos = {r[mode].get("algorithm") for r in per_rank} - {None}
        if algos:
            out[mode]["algorithm"] = ",".join(sorted(algos))
    return out


def _merge_blocks(a: list[dict], b: list[dict]) -> list[dict]:
    """Per rank, the iterations of two blocks of :func:`.allreduce_ranks.measure` as one."""
    out = []
    for ra, rb in zip(a, b):
        r = {}
        for mode in ("oop", "ip"):
            r[mode] = dict(ra[mode], times=ra[mode]["times"] + rb[mode]["times"],
                           wrong=ra[mode]["wrong"] + rb[mode]["wrong"])
        out.append(r)
    return out


Ranks = Union[RankPool, LaunchedRanks]


def _world_sizes(args: argparse.Namespace, launched: Optional[LaunchedRanks]) -> list[int]:
    """The world sizes to run: ``-n`` (default 2), or the launched world (``-n`` must then agree)."""
    if launched is None:
        return args.nranks or [DEFAULT_NRANKS]
    if args.nranks and args.nranks != [launched.world]:
        raise SystemExit(f"launched with {launched.world} ranks (WORLD_SIZE); -n {','.join(map(str, args.nranks))} "
                         "cannot be run by these processes: leave -n out or match it")
    return [launched.world]


def run(args: argparse.Namespace, log=print, launched: Optional[LaunchedRanks] = None) -> dict[str, Any]:
    """Runs the benchmark described by ``args`` (see
    :func:`fastallreduce.bench.allreduce_bw.build_parser`); returns the JSON document.

    The ranks are local processes started per world size, or, with ``launched`` (on its rank 0),
    the ranks of an already launched job (torchrun; see :func:`main`).
    """
    from . import machine

    dtype = DTYPES[args.datatype]
    if args.op == "avg" and not dtype.is_floating_point:
        raise SystemExit(f"avg is not defined on {args.datatype} (fastallreduce raises TypeError); choose another -o")
    if dtype == torch.bool and args.op not in ("max", "min"):
        raise SystemExit("bool supports only -o max and -o min")
    elsize = torch.empty((), dtype=dtype).element_size()
    sizes = sizes_from(args.minbytes, args.maxbytes, args.stepfactor)
    counts = []
    for s in sizes:  # sizes round down to whole elements (at least one), as in nccl-tests
        c = max(1, s // elsize)
        if c not in counts:
            counts.append(c)
    algos = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    impls = ([] if args.no_reference else [REFERENCE]) + algos
    nranks = _world_sizes(args, launched)

    copy_bw = machine.copy_bandwidth(nbytes=min(256 * 2**20, max(64 * 2**20, 2 * sizes[-1])), threads=1)
    doc: dict[str, Any] = {
        "tool": "allreduce_bw",
        "config": {"sizes": [c * elsize for c in counts], "counts": counts, "dtype": args.datatype,
                   "op": args.op, "warmup": args.warmup_iters, "iters": args.iters,
                   "rounds": max(1, getattr(args, "rounds", 1)), "nranks": nranks,
                   "algorithms": algos, "simulated_hosts": args.hosts,
                   "netns_hosts": [args.ranks_per_host] * args.netns_hosts if getattr(args, "netns_hosts", 0) else None,
                   "dist_backend": args.dist_backend,
                   "launcher": "torchrun" if launched is not None else "spawned local ranks",
                   "reference": None if args.no_reference else REFERENCE,
                   "check": "every iteration" if args.check else "one extra iteration after the timed ones",
                   "copy_GBps": copy_bw["GBps"]},
        "machine": machine.describe(),
        "copy_bandwidth": copy_bw,
        "runs": [],
    }
    log(f"# fastallreduce allreduce_bw  {args.datatype} {args.op}  sizes {human_size(counts[0] * elsize)}.."
        f"{human_size(counts[-1] * elsize)} x{args.stepfactor}  warmup {args.warmup_iters}  iters {args.iters}")
    log(f"# machine: {doc['machine']['cpu_model']}, {doc['machine']['usable_cpus']} CPUs, torch {torch.__version__}")
    log(f"# memory copy bandwidth (1 process, 1 thread, torch copy_ of {human_size(copy_bw['bytes'])}): "
        f"{copy_bw['GBps']:.2f} GB/s (bytes copied; memory traffic is twice that)")

    args.copy_GBps = copy_bw["GBps"]
    progress = None
    total = len(nranks) * len(counts) * len(impls)
    if not args.no_progress:
        try:
            from tqdm import tqdm

            progress = tqdm(total=total, desc="allreduce_bw", unit="case", file=sys.stderr, leave=False)
        except ImportError:
            progress = None
    try:
        for world in nranks:
            doc["runs"].append(_run_world(world, impls, counts, elsize, args, progress, log, launched))
    finally:
        if progress is not None:
            progress.close()
    for run_ in doc["runs"]:
        log("")
        log(format_tables(run_, doc["config"]))
    save_outputs(doc, args.out, "allreduce_bw", None if args.no_plot else plot, log, prefix="# ")
    return doc


@contextlib.contextmanager
def _ranks(world: int, args: argparse.Namespace, launched: Optional[LaunchedRanks]) -> Iterator[Ranks]:
    """The ranks to measure on: the launched job's, or ``world`` local processes started for it."""
    if launched is not None:
        yield launched  # closed by whoever launched it, after the whole run
        return
    # One thread per rank: ranks share the cores; fastallreduce sizes its own kernel threads.
    with RankPool(world, threads=1, start_timeout=300.0, pg_timeout_s=pg_timeout_s(args),
                  backend=args.dist_backend) as pool:
        yield pool


def pg_timeout_s(args: argparse.Namespace) -> float:
    """The rank pool's process-group timeout for these arguments (never below 120 s)."""
    return max(120.0, args.timeout)


def _run_world(world: int, impls: list[str], counts: list[int], elsize: int, args: argparse.Namespace,
               progress, log, launched: Optional[LaunchedRanks] = None) -> dict[str, Any]:
    if progress is not None:
        progress.set_description(f"allreduce_bw {world} ranks: starting")
    run_: dict[str, Any] = {"nranks": world, "skipped": {}, "notes": [], "results": {}}
    with _ranks(world, args, launched) as pool:
        status_per_rank = pool.run(allreduce_ranks.setup, impls, args.datatype, args.op, args.hosts, timeout=args.timeout)
        usable = []
        for name in impls:
            reasons = {s[name] for s in status_per_rank}
            if reasons == {None}:
                usable.append(name)
            else:
                why = "; ".join(sorted(r for r in reasons if r))
                run_["skipped"][name] = why
                log(f"# {world} ranks: skipping {name}: {why}")
                if progress is not None:
                    progress.update(len(counts))
        for name in usable:
            run_["results"][name] = []
        rounds = max(1, getattr(args, "rounds", 1))
        for count in counts:
            nbytes = count * elsize
            measured: dict[str, list] = {}
            # Blocks of each implementation in turn, the order reversed every round, so that drift
            # in a shared machine's load hits every implementation alike.
            for rnd in range(rounds):
                for name in (usable if rnd % 2 == 0 else usable[::-1]):
                    if progress is not None:
                        progress.set_description(f"allreduce_bw {world} ranks {human_size(nbytes)} {name}")
                    per_rank = pool.run(allreduce_ranks.measure, name, count, args.datatype, args.op, args.warmup_iters,
                                        args.iters, bool(args.check), timeout=args.timeout)
                    measured[name] = per_rank if rnd == 0 else _merge_blocks(measured[name], per_rank)
            for name in usable:
                row = {"size": nbytes, "count": count, "type": args.datatype, "redop": args.op}
                row.update(_summarise(measured[name], nbytes, world))
                for mode in ("oop", "ip"):
                    row[mode]["busbw_share_of_copy"] = row[mode]["busbw_GBps"] / args.copy_GBps
                run_["results"][name].append(row)
                if progress is not None:
                    progress.update(1)
            # What going through torch.distributed costs over calling the Communicator directly
            # (in place: torch.distributed's out-of-place is a copy plus this call); what a
            # registered buffer saves over an ordinary one.
            for other in (BACKEND, REGISTERED):
                if other not in usable or "auto" not in usable:
                    continue
                per_rank = pool.run(allreduce_ranks.paired, count, args.datatype, args.op, max(2 * args.iters, 20), other,
                                    timeout=args.timeout)
                med = {k: statistics.median(max(ts) for ts in zip(*(r[k] for r in per_rank))) for k in per_rank[0]}
                run_["results"][other][-1]["ip"]["time_vs_communicator"] = med[other] / med["auto"]
        pool.run(allreduce_ranks.teardown, timeout=60)
    ref = run_["results"].get(REFERENCE)
    if ref:
        for name, rows in run_["results"].items():
            if name == REFERENCE:
                continue
            for row, rrow in zip(rows, ref):
                for mode in ("oop", "ip"):
                    row[mode]["ratio_vs_gloo"] = rrow[mode]["time_us"] / row[mode]["time_us"]
    if args.op == "avg" and REFERENCE in run_["results"]:
        run_["notes"].append("gloo has no AVG: its avg is all_reduce(SUM) followed by a division, both timed")
    if getattr(args, "netns_hosts", 0):
        run_["notes"].append(f"ranks on {args.netns_hosts} namespaced hosts x {args.ranks_per_host} (own network, "
                             "hostname, IPC and /dev/shm each; veth links at memory speed), the real topology")
    if args.hosts:
        run_["notes"].append(f"fastallreduce sees {args.hosts} simulated hosts (consecutive blocks of ranks); "
                             "all ranks really share this machine"
                             + (" (the backend's engine sees the real topology)" if BACKEND in impls else ""))
    dist_measured = [n for n in DIST_IMPLS if n in run_["results"]]
    if dist_measured:
        run_["notes"].append(f"{' and '.join(dist_measured)} out-of-place = copy the input into the output, "
                             "then all_reduce in place (timed)")
    if launched is not None or args.dist_backend != "gloo":
        run_["notes"].append(f"ranks: {'launched by torchrun' if launched is not None else 'spawned'}, default "
                             f"process group on backend {args.dist_backend!r}")
    return run_
