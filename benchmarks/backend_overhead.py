"""Time per torch.distributed.all_reduce on the fastallreduce backend vs gloo vs the Communicator.

    PYTHONPATH=. GLOO_SOCKET_IFNAME=lo python benchmarks/backend_overhead.py [--world 2] [--reps 15]
    PYTHONPATH=. GLOO_SOCKET_IFNAME=lo python benchmarks/backend_overhead.py --python-prototype

Rank processes whose default group is on backend="fastallreduce"; float32 sum, in place,
synchronous calls. Methods, timed in one run on the same processes:

- ``communicator``: ``far.Communicator().allreduce(t)`` called directly (the reference).
- ``backend (C++)``: ``dist.all_reduce(t)`` on the default group (the shipped c10d::Backend).
- ``gloo``: ``dist.all_reduce(t)`` on a gloo group over the same ranks.
- with ``--python-prototype`` instead: ``backend (Python)``, the same call on a group whose
  backend is a minimal Python subclass of ``torch._C._distributed_c10d.Backend`` forwarding
  allreduce to a Communicator (the alternative design, defined only here, for the comparison).

Each method runs ``reps`` blocks of ``iters`` calls, interleaved round-robin so that drift hits
them alike; every call is timed, and the table shows the median call time (the slowest rank's)
and the backend relative to the Communicator. ``--world 1`` isolates the per-call overhead;
``--flush-mib N`` copies an N MiB buffer before every timed call (untimed), so that the call runs
with caches as cold as a collective of that size leaves them: ``--world 1 --flush-mib 2`` shows
what torch's own per-call path costs after a 1 MiB allreduce.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastallreduce as far  # noqa: E402
from fastallreduce.launch import RankPool  # noqa: E402

SIZES = [4 * 1024, 1 << 20, 16 << 20]
ITERS = {4 * 1024: 20, 1 << 20: 4, 16 << 20: 1}

_state: dict = {}


class _PyBackend(torch._C._distributed_c10d.Backend):
    """The Python-subclass design: allreduce forwarded to a Communicator, nothing else."""

    def __init__(self, store: dist.Store, rank: int, size: int, timeout) -> None:
        super().__init__(rank, size)
        self.comm = far.Communicator._from_store(dist.PrefixStore("pyb/", store), rank, size, timeout=timeout,
                                                 uid="pyproto")

    def getBackendName(self) -> str:  # noqa: N802 - the C++ name the trampoline looks up
        return "fastallreduce_py"

    def allreduce(self, tensors, opts):
        fut = self.comm.allreduce(tensors[0], op=opts.reduceOp, async_op=True)
        return torch._C._distributed_c10d._create_work_from_future(fut)


def _pin() -> None:
    # One core per rank, every thread of the process (engine, gloo, watcher): two ranks sharing
    # a core make each message hand-off wait for a scheduler slice (~4 ms stalls on 2 cores).
    cpus = sorted(os.sched_getaffinity(0))
    if dist.get_world_size() > len(cpus):
        return
    core = {cpus[dist.get_rank() % len(cpus)]}
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), core)
        except OSError:
            pass


def _setup(prototype: bool) -> None:
    if _state:
        return
    ranks = list(range(dist.get_world_size()))
    _state["gloo"] = dist.new_group(ranks, backend="gloo")
    if prototype:
        if "FASTALLREDUCE_PY" not in dist.Backend._plugins:
            dist.Backend.register_backend("fastallreduce_py", _PyBackend, devices=["cpu"])
        _state["py"] = dist.new_group(ranks, backend="fastallreduce_py")
    _state["comm"] = far.Communicator()
    _pin()  # after every thread exists


def _bench(nbytes: int, reps: int, prototype: bool, flush_mib: int = 0) -> dict:
    """Runs on every rank; returns {method: [seconds per call]}."""
    _setup(prototype)
    x = torch.ones(nbytes // 4)
    flush_src = torch.ones(flush_mib << 18)
    flush_dst = torch.empty_like(flush_src)
    comm = _state["comm"]
    methods = {"communicator": lambda: comm.allreduce(x)}
    if prototype:
        # Its engine thread must take the GIL to drop the tensors it was given, which slows every
        # other method in the process: so the prototype is measured in a run of its own.
        methods["backend (Python)"] = lambda: dist.all_reduce(x, group=_state["py"])
    else:
        methods["backend (C++)"] = lambda: dist.all_reduce(x)
        methods["gloo"] = lambda: dist.all_reduce(x, group=_state["gloo"])
    iters = ITERS[nbytes]
    for fn in methods.values():  # warm-up: connections, staging buffers, page faults
        for _ in range(3):
            fn()
    out: dict = {k: [] for k in methods}
    for _ in range(reps):
        for name, fn in methods.items():
            dist.barrier(group=_state["gloo"])
            for _ in range(iters):
                if flush_mib:
                    flush_dst.copy_(flush_src)
                t0 = time.perf_counter()
                fn()
                out[name].append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--flush-mib", type=int, default=0,
                    help="copy a buffer of this many MiB before every timed call (cold caches)")
    ap.add_argument("--python-prototype", action="store_true",
                    help="time the Python-subclass design instead of the C++ backend and gloo")
    args = ap.parse_args()
    print(f"# {args.world} ranks, float32 sum, torch {torch.__version__}, {os.cpu_count()} cores; "
          f"median time per call over {args.reps} interleaved blocks"
          + (f"; {args.flush_mib} MiB copied before each call" if args.flush_mib else ""))
    names = ["communicator"] + (["backend (Python)"] if args.python_prototype else ["backend (C++)", "gloo"])
    mine = names[1]
    print("| size | " + " | ".join(f"{n} (µs)" for n in names) + f" | {mine} / communicator |")
    print("|---" * (len(names) + 2) + "|", flush=True)
    with RankPool(args.world, backend="fastallreduce", threads=1) as pool:
        for nbytes in SIZES:
            per_rank = pool.run(_bench, nbytes, args.reps, args.python_prototype, args.flush_mib, timeout=900)
            # Median per call on each rank (robust to the scheduler stalls of a loaded machine),
            # then the slowest rank: a collective ends when its slowest rank does.
            med = {k: max(statistics.median(r[k]) for r in per_rank) for k in per_rank[0]}
            size = f"{nbytes // 1024} KiB" if nbytes < (1 << 20) else f"{nbytes >> 20} MiB"
            cells = " | ".join(f"{med[n] * 1e6:.0f}" for n in names)
            print(f"| {size} | {cells} | {med[mine] / med['communicator']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
