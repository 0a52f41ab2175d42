"""The allreduce benchmark's harness: what runs on the ranks, and the driver that runs it.

On every rank (module-level functions, so that spawned rank processes can unpickle them): the
groups and communicators of each implementation, a probe that says which can run, the timed
loops (out of place and in place, every iteration checked outside the timed region), and the
paired loop that times the backend against the Communicator call for call.

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
from .allreduce_check import (BACKEND, DEEPSPEED, DIST_IMPLS, DTYPES, INPLACE_IMPLS, REFERENCE, REGISTERED, _tile,
                              count_wrong, expected_period, make_input)
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
# code that runs on the ranks
# ---------------------------------------------------------------------------------------------
# comms: algorithm -> Communicator; groups: implementation in DIST_IMPLS -> its process group;
# bufs: the current size's buffers.
_state: dict[str, Any] = {"comms": {}, "groups": {}, "bufs": None}


def _harness_group() -> "torch.distributed.ProcessGroup":
    """The gloo group over all ranks: gloo's reference and the barriers between measurements.

    The default group when it is gloo, else one made once (collectively) and reused: the
    harness's own synchronisation then never depends on the backend being measured.
    """
    from ..backend import world_group

    return world_group("gloo")


def _dist_group(impl: str) -> "torch.distributed.ProcessGroup":
    """The process group ``impl`` (gloo or the fastallreduce backend) all_reduces on; collective on first use."""
    from ..backend import BACKEND_NAME, world_group

    g = _state["groups"].get(impl)
    if g is None:
        g = _harness_group() if impl == REFERENCE else world_group(BACKEND_NAME)
        _state["groups"][impl] = g
    return g


def _deepspeed_setup(dtype: torch.dtype, op: str) -> None:
    """Initialises DeepSpeed's CPU shared-memory allreduce over the default group's ranks (all on
    this host). Raises NotImplementedError where it cannot run this dtype/op or is not installed."""
    import os

    import torch.distributed as dist

    if op != "sum" or dtype not in (torch.float32, torch.bfloat16):
        raise NotImplementedError("DeepSpeed's CPU allreduce supports float32/bfloat16 sum only")
    if _state.get("deepspeed"):
        return
    try:
        import deepspeed
    except ImportError as e:
        raise NotImplementedError(f"deepspeed is not installed ({e})") from None
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_SIZE=str(world), RANK=str(rank), WORLD_SIZE=str(world))
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    _state["deepspeed"] = True


def _dist_allreduce(t: torch.Tensor, op: str, impl: str) -> None:
    """``torch.distributed.all_reduce(t)`` in place on ``impl``'s group (see :func:`_dist_group`),
    or DeepSpeed's allreduce for :data:`DEEPSPEED`."""
    import torch.distributed as dist

    if impl == DEEPSPEED:
        torch.ops.deepspeed.inference_all_reduce_(t)
        return
    group = _state["groups"][impl]
    if op == "avg" and impl == REFERENCE:  # gloo has no AVG: sum, then divide (part of the timed work)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        t.div_(dist.get_world_size())
        return
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op.upper()), group=group)


def _rank_setup(impls: list[str], dtype_name: str, op: str, hosts: int = 0) -> dict[str, Optional[str]]:
    """Creates the communicators and tries a tiny allreduce with each implementation.

    ``hosts`` > 0 splits the ranks into that many simulated hosts (consecutive blocks) for
    fastallreduce's topology, so that the hierarchical path can be measured on one machine.
    Returns impl -> None when usable, or the reason it is not (NotImplementedError, ValueError...).
    Every rank runs it with the same ``impls``: the groups it makes are made in the same order.
    """
    import torch.distributed as dist

    import fastallreduce as far

    dtype = DTYPES[dtype_name]
    rank, world = dist.get_rank(), dist.get_world_size()
    _harness_group()  # first, so that it exists even with --no-reference (barriers)
    status: dict[str, Optional[str]] = {}
    for name in impls:
        x = make_input(rank, 2 * world + 1, dtype, op)
        try:
            if name in DIST_IMPLS:
                _dist_group(name)
                _dist_allreduce(x, op, name)
            elif name == DEEPSPEED:
                _deepspeed_setup(dtype, op)
                _dist_allreduce(x, op, name)
            else:
                c = _state["comms"].get(name)
                if c is None:
                    host_id = f"simulated-host-{rank * hosts // world}" if hosts else None
                    c = far.Communicator(algorithm="auto" if name == REGISTERED else name, host_id=host_id)
                    _state["comms"][name] = c
                if name == REGISTERED:
                    x = c.empty(x.numel(), dtype=dtype).copy_(x)
                c.allreduce(x, op=op)
            bad = count_wrong(x, _tile(expected_period(world, dtype, op), x.numel()), op)
            status[name] = None if bad == 0 else f"probe gave {bad} wrong elements"
        except (NotImplementedError, ValueError, TypeError, RuntimeError) as e:
            status[name] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            _state["comms"].pop(name, None)
    return status


def _buffers(count: int, dtype: torch.dtype, op: str) -> dict[str, torch.Tensor]:
    """Input, work buffer and expected result for this size, reused by every implementation."""
    import torch.distributed as dist

    key = (count, dtype, op)
    b = _state["bufs"]
    if b is None or b["key"] != key:
        _state["bufs"] = None  # free the previous size's buffers before allocating the next
        rank, world = dist.get_rank(), dist.get_world_size()
        inp = make_input(rank, count, dtype, op)
        work = torch.empty_like(inp)
        work.copy_(inp)  # first touch outside the timed region
        b = {"key": key, "inp": inp, "work": work,
             "expected": _tile(expected_period(world, dtype, op), count)}
        comm = _state["comms"].get(REGISTERED)
        if comm is not None:  # the registered implementation's work buffer
            b["registered"] = comm.empty(count, dtype=dtype).copy_(inp)
        _state["bufs"] = b
    return b


def _rank_measure(impl: str, count: int, dtype_name: str, op: str, warmup: int, iters: int,
                  check_every: bool) -> dict[str, Any]:
    """Times ``iters`` out-of-place and ``iters`` in-place allreduces of ``count`` elements on this rank."""
    import torch.distributed as dist

    dtype = DTYPES[dtype_name]
    b = _buffers(count, dtype, op)
    inp, work, expected = b["inp"], b["work"], b["expected"]
    if impl == REGISTERED:
        work = b["registered"]
    comm = None if impl in INPLACE_IMPLS else _state["comms"][impl]
    result: dict[str, Any] = {}
    for mode in ("oop", "ip"):
        def once() -> float:
            if mode == "ip":
                work.copy_(inp)  # fresh input, outside the timed region
            t0 = time.perf_counter()
            if comm is None:
                if mode == "oop":  # no out-of-place all_reduce: copy, then reduce
                    work.copy_(inp)
                _dist_allreduce(work, op, impl)
            elif mode == "oop":
                comm.allreduce(inp, op=op, out=work)
            else:
                comm.allreduce(work, op=op)
            return time.perf_counter() - t0

        wrong = 0
        for _ in range(warmup):
            once()
            if check_every:
                wrong += count_wrong(work, expected, op)
        dist.barrier(group=_harness_group())
        times = []
        for _ in range(iters):
            times.append(once())
            if check_every:
                wrong += count_wrong(work, expected, op)
        if not check_every:
            once()
            wrong += count_wrong(work, expected, op)
        if mode == "oop" and comm is not None and not torch.equal(inp, make_input(dist.get_rank(), count, dtype, op)):
            wrong += count_wrong(inp, make_input(dist.get_rank(), count, dtype, op), "sum")
        result[mode] = {"times": times, "wrong": wrong}
        if comm is not None:
            result[mode]["algorithm"] = comm.last_algorithm
    return result


def _rank_paired(count: int, dtype_name: str, op: str, iters: int, other: str = BACKEND) -> dict[str, list[float]]:
    """``other`` against the Communicator (auto, ordinary tensors), in place, call for call: each
    iteration times one ``comm.allreduce`` and one call of ``other`` (``dist.all_reduce`` on the
    backend group, or the Communicator on its registered buffer), in alternating order, each on a
    fresh copy of the input, so that drift in a shared machine's load and cache state hit both
    alike."""
    import torch.distributed as dist

    b = _buffers(count, DTYPES[dtype_name], op)
    inp, work = b["inp"], b["work"]
    comm = _state["comms"]["auto"]
    if other == REGISTERED:
        reg, reg_comm = b["registered"], _state["comms"][REGISTERED]
        run_other = lambda: reg_comm.allreduce(reg, op=op)  # noqa: E731
    else:
        reg, run_other = work, lambda: _dist_allreduce(work, op, BACKEND)  # noqa: E731
    calls = {"auto": (work, lambda: comm.allreduce(work, op=op)), other: (reg, run_other)}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for i in range(iters):
        dist.barrier(group=_harness_group())
        for name in (("auto", other) if i % 2 == 0 else (other, "auto")):
            buf, call = calls[name]
            buf.copy_(inp)
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return times


def _rank_teardown() -> None:
    for c in _state["comms"].values():
        try:
            c.close()
        except Exception:  # noqa: BLE001 - teardown is best effort
            pass
    _state["comms"].clear()
    # The groups stay alive (fastallreduce.backend.world_group caches them): making them again
    # would be another collective set-up for nothing.
    _state["groups"].clear()
    _state["bufs"] = None


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
    """Per rank, the iterations of two blocks of :func:`_rank_measure` as one."""
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
    with RankPool(world, threads=1, start_timeout=300.0, pg_timeout_s=_pg_timeout_s(args),
                  backend=args.dist_backend) as pool:
        yield pool


def _pg_timeout_s(args: argparse.Namespace) -> float:
    return max(120.0, args.timeout)


def _run_world(world: int, impls: list[str], counts: list[int], elsize: int, args: argparse.Namespace,
               progress, log, launched: Optional[LaunchedRanks] = None) -> dict[str, Any]:
    if progress is not None:
        progress.set_description(f"allreduce_bw {world} ranks: starting")
    run_: dict[str, Any] = {"nranks": world, "skipped": {}, "notes": [], "results": {}}
    with _ranks(world, args, launched) as pool:
        status_per_rank = pool.run(_rank_setup, impls, args.datatype, args.op, args.hosts, timeout=args.timeout)
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
                    per_rank = pool.run(_rank_measure, name, count, args.datatype, args.op, args.warmup_iters,
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
                per_rank = pool.run(_rank_paired, count, args.datatype, args.op, max(2 * args.iters, 20), other,
                                    timeout=args.timeout)
                med = {k: statistics.median(max(ts) for ts in zip(*(r[k] for r in per_rank))) for k in per_rank[0]}
                run_["results"][other][-1]["ip"]["time_vs_communicator"] = med[other] / med["auto"]
        pool.run(_rank_teardown, timeout=60)
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
