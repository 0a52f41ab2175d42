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

Outputs: the tables on stdout, ``allreduce_bw.json`` and ``allreduce_bw.png`` (busbw against size,
one panel per world size) in the output directory, a progress bar on stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from datetime import timedelta
from typing import Any, Iterator, Optional, Sequence, Union

import torch

from ..launch import LaunchedRanks, RankPool, launched_by_torchrun
from .output import save_outputs

# Defaults: the README's main job runs this with no arguments; it must finish in a few minutes on
# 2 cores (2 ranks, 4 KiB .. 256 MiB by 4x, gloo + every available algorithm).
DEFAULT_BEGIN = "4K"
DEFAULT_END = "256M"
DEFAULT_FACTOR = 4
DEFAULT_NRANKS = 2
DEFAULT_WARMUP = 3
DEFAULT_ITERS = 10
DEFAULT_ALGORITHMS = "auto,ring,halving_doubling,shm,hierarchical"

DTYPES = {
    "float32": torch.float32, "float": torch.float32, "float64": torch.float64, "double": torch.float64,
    "float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
    "int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32, "int": torch.int32,
    "int64": torch.int64, "bool": torch.bool,
}
OPS = ("sum", "avg", "product", "max", "min")
REFERENCE = "gloo"
#: The implementation that times ``torch.distributed.all_reduce`` on a fastallreduce-backend group.
BACKEND = "backend"
#: Implementations timed through torch.distributed.all_reduce (no out= form; gloo has no AVG).
DIST_IMPLS = (REFERENCE, BACKEND)


# ---------------------------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------------------------
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


def human_size(nbytes: int) -> str:
    for unit, m in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= m and nbytes % m == 0:
            return f"{nbytes // m} {unit}"
    return f"{nbytes} B"


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
                        "on a group of the fastallreduce backend); ones that this build cannot run are skipped "
                        f"with a note (default {DEFAULT_ALGORITHMS})")
    p.add_argument("--dist-backend", default="gloo",
                   help="torch.distributed backend of the ranks' default group, e.g. fastallreduce (default gloo); "
                        "the reference is measured on a gloo group either way")
    p.add_argument("--hosts", type=int, default=0,
                   help="split the ranks into this many simulated hosts (consecutive blocks) for fastallreduce's "
                        "topology, e.g. to measure 'hierarchical' on one machine (default 0: the real topology)")
    p.add_argument("--no-reference", action="store_true",
                   help="do not measure torch.distributed gloo (no ratio columns)")
    p.add_argument("--out", default="results", help="output directory for JSON and PNG (default results/)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds one size of one implementation may take before the run is aborted "
                        "(under torchrun: the process group's timeout)")
    return p


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
# inputs whose reduction is exactly known
# ---------------------------------------------------------------------------------------------
_PERIOD = 7  # a prime, so that rank patterns do not line up with power-of-two chunk boundaries


def _pattern_values(dtype: torch.dtype, op: str) -> list[int]:
    """Small integers whose reductions over up to hundreds of ranks stay exact in every dtype."""
    if dtype == torch.bool:
        return [0, 1, 1, 0, 1, 0, 0]
    if op == "product":
        # Powers of two: any product is exact in floating point; integer wrap-around is the same
        # whatever the order of multiplication (arithmetic modulo 2^bits).
        return [1, 2, 1, 2, 1, 2, 1] if dtype == torch.uint8 else [1, -1, 2, -2, 1, 2, -1]
    if dtype == torch.uint8:
        return [0, 1, 2, 3, 0, 1, 2]
    return [-3, -2, -1, 0, 1, 2, 3]


def _rank_period(rank: int, dtype: torch.dtype, op: str) -> list[int]:
    vals = _pattern_values(dtype, op)
    return [vals[(j + 3 * rank) % _PERIOD] for j in range(_PERIOD)]


def _tile(period: torch.Tensor, count: int) -> torch.Tensor:
    reps = count // _PERIOD + 1
    return period.repeat(reps)[:count].contiguous()


def make_input(rank: int, count: int, dtype: torch.dtype, op: str) -> torch.Tensor:
    """Rank ``rank``'s input: a period-7 integer pattern shifted by rank."""
    return _tile(torch.tensor(_rank_period(rank, dtype, op), dtype=dtype), count)


def expected_period(world: int, dtype: torch.dtype, op: str) -> torch.Tensor:
    """The exact reduction of one period over ``world`` ranks, computed in 64-bit arithmetic."""
    exact_t = torch.float64 if (dtype.is_floating_point) else torch.int64
    rows = torch.tensor([_rank_period(r, dtype, op) for r in range(world)], dtype=exact_t)
    if op in ("sum", "avg"):
        res = rows.sum(0)
        if op == "avg":
            res = res / world
    elif op == "product":
        res = rows.prod(0)
    elif op == "max":
        res = rows.max(0).values
    else:
        res = rows.min(0).values
    if dtype == torch.bool:
        return res.bool()
    if not dtype.is_floating_point and torch.iinfo(dtype).bits < 64:
        # Wrap around like the fixed-width arithmetic does (products of int8 may overflow).
        bits = torch.iinfo(dtype).bits
        res = res.remainder(2**bits)
        if dtype.is_signed:
            res = torch.where(res >= 2 ** (bits - 1), res - 2**bits, res)
    return res.to(dtype)


def count_wrong(result: torch.Tensor, expected: torch.Tensor, op: str) -> int:
    """Number of elements of ``result`` that differ from the exact answer (NaN counts as wrong)."""
    if op != "avg" and torch.equal(result, expected):
        return 0
    if op == "avg" and result.dtype.is_floating_point:
        # The division rounds once; allow two ulps of the result's type.
        tol = 2 * torch.finfo(result.dtype).eps
        ok = torch.isclose(result.float() if result.dtype in (torch.float16, torch.bfloat16) else result,
                           expected.float() if expected.dtype in (torch.float16, torch.bfloat16) else expected,
                           rtol=tol, atol=tol)
        return int((~ok).sum())
    return int(result.ne(expected).sum())


# ---------------------------------------------------------------------------------------------
# code that runs on the ranks (module-level so that spawned processes can unpickle it)
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


def _dist_allreduce(t: torch.Tensor, op: str, impl: str) -> None:
    """``torch.distributed.all_reduce(t)`` in place on ``impl``'s group (see :func:`_dist_group`)."""
    import torch.distributed as dist

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
            else:
                c = _state["comms"].get(name)
                if c is None:
                    host_id = f"simulated-host-{rank * hosts // world}" if hosts else None
                    c = far.Communicator(algorithm=name, host_id=host_id)
                    _state["comms"][name] = c
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
        _state["bufs"] = b
    return b


def _rank_measure(impl: str, count: int, dtype_name: str, op: str, warmup: int, iters: int,
                  check_every: bool) -> dict[str, Any]:
    """Times ``iters`` out-of-place and ``iters`` in-place allreduces of ``count`` elements on this rank."""
    import torch.distributed as dist

    dtype = DTYPES[dtype_name]
    b = _buffers(count, dtype, op)
    inp, work, expected = b["inp"], b["work"], b["expected"]
    comm = None if impl in DIST_IMPLS else _state["comms"][impl]
    result: dict[str, Any] = {}
    for mode in ("oop", "ip"):
        def once() -> float:
            if mode == "ip":
                work.copy_(inp)  # fresh input, outside the timed region
            t0 = time.perf_counter()
            if comm is None:
                if mode == "oop":  # torch.distributed has no out-of-place all_reduce: copy, then reduce
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


def _rank_paired(count: int, dtype_name: str, op: str, iters: int) -> dict[str, list[float]]:
    """The backend against the Communicator it wraps, in place, call for call: each iteration
    times one ``comm.allreduce`` (auto) and one ``dist.all_reduce`` on the backend group, in
    alternating order, each on a fresh copy of the input, so that drift in a shared machine's
    load and cache state hit both alike."""
    import torch.distributed as dist

    b = _buffers(count, DTYPES[dtype_name], op)
    inp, work = b["inp"], b["work"]
    comm = _state["comms"]["auto"]
    calls = {"auto": lambda: comm.allreduce(work, op=op), BACKEND: lambda: _dist_allreduce(work, op, BACKEND)}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for i in range(iters):
        dist.barrier(group=_harness_group())
        for name in (("auto", BACKEND) if i % 2 == 0 else (BACKEND, "auto")):
            work.copy_(inp)
            t0 = time.perf_counter()
            calls[name]()
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
    """Runs the benchmark described by ``args`` (see :func:`build_parser`); returns the JSON document.

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
                   "op": args.op, "warmup": args.warmup_iters, "iters": args.iters, "nranks": nranks,
                   "algorithms": algos, "simulated_hosts": args.hosts, "dist_backend": args.dist_backend,
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
        for count in counts:
            nbytes = count * elsize
            for name in usable:
                if progress is not None:
                    progress.set_description(f"allreduce_bw {world} ranks {human_size(nbytes)} {name}")
                per_rank = pool.run(_rank_measure, name, count, args.datatype, args.op, args.warmup_iters,
                                    args.iters, bool(args.check), timeout=args.timeout)
                row = {"size": nbytes, "count": count, "type": args.datatype, "redop": args.op}
                row.update(_summarise(per_rank, nbytes, world))
                for mode in ("oop", "ip"):
                    row[mode]["busbw_share_of_copy"] = row[mode]["busbw_GBps"] / args.copy_GBps
                run_["results"][name].append(row)
                if progress is not None:
                    progress.update(1)
            if BACKEND in usable and "auto" in usable:
                # What going through torch.distributed costs over calling the Communicator
                # directly (in place: torch.distributed's out-of-place is a copy plus this call).
                per_rank = pool.run(_rank_paired, count, args.datatype, args.op, max(2 * args.iters, 20),
                                    timeout=args.timeout)
                med = {k: statistics.median(max(ts) for ts in zip(*(r[k] for r in per_rank))) for k in per_rank[0]}
                run_["results"][BACKEND][-1]["ip"]["time_vs_communicator"] = med[BACKEND] / med["auto"]
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


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def _fmt_bw(v: float) -> str:
    return f"{v:7.3f}" if v < 100 else f"{v:7.1f}"


def _fmt_time(us: float) -> str:
    return f"{us:10.1f}" if us < 1e6 else f"{us:10.0f}"


def _title(name: str) -> str:
    """The heading of an implementation's table."""
    if name == REFERENCE:
        return "torch.distributed gloo (reference)"
    if name == BACKEND:
        return "dist.all_reduce on the fastallreduce backend"
    return f"fastallreduce algorithm={name}"


def format_tables(run_: dict[str, Any], config: dict[str, Any]) -> str:
    """The nccl-tests-style tables of one world size: one block per implementation."""
    world = run_["nranks"]
    lines = [f"# ===== {world} ranks, {config['dtype']} {config['op']}; time = median over {config['iters']} "
             f"iterations of the slowest rank; busbw = algbw * 2(p-1)/p; checked: {config['check']} ====="]
    for name, why in run_["skipped"].items():
        lines.append(f"# skipped {name}: {why}")
    for note in run_["notes"]:
        lines.append(f"# note: {note}")
    has_ref = REFERENCE in run_["results"]
    for name, rows in run_["results"].items():
        is_ref = name == REFERENCE
        title = _title(name)
        extra_h1 = "" if is_ref or not has_ref else "   gloo/ours"
        extra_h2 = "" if is_ref or not has_ref else "    oop    ip"
        show_algo = name == "auto"
        # The backend against the Communicator it wraps (auto), timed call for call in one
        # interleaved loop (_rank_paired): its median time / the Communicator's, in place.
        vs_comm = bool(rows) and "time_vs_communicator" in rows[0]["ip"]
        if vs_comm:
            extra_h1 += " time/auto"
            extra_h2 += "        ip"
        lines.append("#")
        lines.append(f"# {title}")
        lines.append("#" + " " * 43 + "out-of-place" + " " * 26 + "in-place" + " " * 14 + extra_h1)
        lines.append(f"# {'size':>10} {'count':>11} {'type':>8} {'redop':>6}"
                     f" {'time':>10} {'algbw':>7} {'busbw':>7} {'#wrong':>6}"
                     f" {'time':>10} {'algbw':>7} {'busbw':>7} {'#wrong':>6}" + extra_h2
                     + ("  chose" if show_algo else ""))
        lines.append(f"# {'(B)':>10} {'(elements)':>11} {'':>8} {'':>6}"
                     f" {'(us)':>10} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}"
                     f" {'(us)':>10} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}")
        for r in rows:
            o, i = r["oop"], r["ip"]
            line = (f"  {r['size']:>10} {r['count']:>11} {r['type']:>8} {r['redop']:>6}"
                    f" {_fmt_time(o['time_us'])} {_fmt_bw(o['algbw_GBps'])} {_fmt_bw(o['busbw_GBps'])} {o['wrong']:>6}"
                    f" {_fmt_time(i['time_us'])} {_fmt_bw(i['algbw_GBps'])} {_fmt_bw(i['busbw_GBps'])} {i['wrong']:>6}")
            if not is_ref and has_ref:
                line += f" {o['ratio_vs_gloo']:6.2f} {i['ratio_vs_gloo']:5.2f}"
            if vs_comm:
                line += f" {i['time_vs_communicator']:9.3f}"
            if show_algo:
                line += f"  {i.get('algorithm', '?')}"
            lines.append(line)
    copy = config.get("copy_GBps")
    if copy:
        lines.append("#")
        # Compared at the largest size only: smaller buffers stay in cache, the copy was measured in DRAM.
        for name, rows in run_["results"].items():
            last = rows[-1]
            lines.append(f"# {name}: in-place busbw at {human_size(last['size'])} {last['ip']['busbw_GBps']:.3f} GB/s"
                         f" = {100 * last['ip']['busbw_GBps'] / copy:.0f}% of the memory copy bandwidth ({copy:.2f} GB/s)")
    total_wrong = sum(r[m]["wrong"] for rows in run_["results"].values() for r in rows for m in ("oop", "ip"))
    lines.append(f"# {world} ranks: out of bounds values (#wrong, all rows): {total_wrong} "
                 f"{'OK' if total_wrong == 0 else 'FAILED'}")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: str) -> None:
    """busbw against size, one panel per world size, every implementation (in-place solid, out-of-place dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = doc["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(6.2 * len(runs), 4.6), squeeze=False)
    copy_gbps = doc["copy_bandwidth"]["GBps"]
    for ax, run_ in zip(axes[0], runs):
        for k, (name, rows) in enumerate(run_["results"].items()):
            xs = [r["size"] for r in rows]
            color = "black" if name == REFERENCE else f"C{k}"
            label = {REFERENCE: "gloo (torch.distributed)", BACKEND: "dist.all_reduce (fastallreduce backend)"}.get(
                name, name)
            ax.plot(xs, [r["ip"]["busbw_GBps"] for r in rows], "-o", ms=3, color=color, label=f"{label} in-place")
            ax.plot(xs, [r["oop"]["busbw_GBps"] for r in rows], "--", color=color, alpha=0.6,
                    label=f"{label} out-of-place")
        ax.axhline(copy_gbps, color="grey", lw=0.8, ls=":", label=f"memory copy {copy_gbps:.1f} GB/s (1 thread)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel("busbw (GB/s)")
        ax.set_title(f"allreduce {doc['config']['dtype']} {doc['config']['op']}, {run_['nranks']} ranks")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{doc['machine']['cpu_model']}, {doc['machine']['usable_cpus']} CPUs; time = median of the slowest rank", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def total_wrong(doc: dict[str, Any]) -> int:
    """#wrong summed over every world size, implementation, size and mode of a run's document."""
    return sum(r[m]["wrong"] for run_ in doc["runs"] for rows in run_["results"].values()
               for r in rows for m in ("oop", "ip"))


def _main_launched(args: argparse.Namespace) -> int:
    """Under torchrun: join the launched ranks; rank 0 drives the run and prints, the others serve it."""
    import torch.distributed as dist

    torch.set_num_threads(1)  # as the spawned ranks: the ranks share the cores
    dist.init_process_group(args.dist_backend, timeout=timedelta(seconds=_pg_timeout_s(args)))
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
    if launched_by_torchrun():
        return _main_launched(args)
    return 0 if total_wrong(run(args)) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
