"""Time per torch.distributed.all_reduce on the fastallreduce backend vs gloo vs the Communicator.

    PYTHONPATH=. GLOO_SOCKET_IFNAME=lo python benchmarks/backend_overhead.py [--world 2] [--reps 15]

All rows come from one run on the same 2 (default) rank processes (default group:
backend="fastallreduce"), float32 sum, in-place, synchronous calls:

- ``backend (C++)``: ``dist.all_reduce(t)`` on the default group (the shipped c10d::Backend).
- ``backend (Python)``: the same call on a group whose backend is a minimal Python subclass of
  ``torch._C._distributed_c10d.Backend`` (c10d::Backend) forwarding allreduce to a Communicator (the alternative design,
  defined only here, for the comparison).
- ``communicator``: ``far.Communicator().allreduce(t)`` called directly (synchronous: it runs on
  the caller's thread).
- ``gloo``: ``dist.all_reduce(t)`` on a gloo group over the same ranks.

Each method runs ``reps`` blocks of ``iters`` calls, interleaved round-robin so that drift hits
them alike; the table shows the median over blocks of the per-call time, and the overhead of
each backend relative to the Communicator.
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
ITERS = {4 * 1024: 100, 1 << 20: 10, 16 << 20: 2}

_state: dict = {}


class _PyBackend(torch._C._distributed_c10d.Backend):
    """The Python-subclass design: allreduce forwarded to a Communicator, nothing else."""

    def __init__(self, store: dist.Store, rank: int, size: int, timeout) -> None:
        super().__init__(rank, size)
        gloo = dist.ProcessGroupGloo(dist.PrefixStore("pyb/gloo/", store), rank, size, timeout)
        pg = dist.ProcessGroup(dist.PrefixStore("pyb/", store), rank, size)
        pg._set_default_backend(dist.ProcessGroup.BackendType.GLOO)
        pg._register_backend(torch.device("cpu"), dist.ProcessGroup.BackendType.GLOO, gloo)
        self.comm = far.Communicator._from_process_group(pg, dist.PrefixStore("pyb/comm/", store), timeout=timeout)

    def getBackendName(self) -> str:  # noqa: N802 - the C++ name the trampoline looks up
        return "fastallreduce_py"

    def allreduce(self, tensors, opts):
        fut = self.comm.allreduce(tensors[0], op=opts.reduceOp, async_op=True)
        return torch._C._distributed_c10d._create_work_from_future(fut)


def _setup() -> None:
    if _state:
        return
    if "FASTALLREDUCE_PY" not in dist.Backend._plugins:
        dist.Backend.register_backend("fastallreduce_py", _PyBackend, devices=["cpu"])
    ranks = list(range(dist.get_world_size()))
    _state["gloo"] = dist.new_group(ranks, backend="gloo")
    _state["py"] = dist.new_group(ranks, backend="fastallreduce_py")
    _state["comm"] = far.Communicator()


def _bench(nbytes: int, reps: int) -> dict:
    """Runs on every rank; returns {method: [seconds per call, one per block]}."""
    _setup()
    x = torch.ones(nbytes // 4)
    comm = _state["comm"]
    methods = {
        "backend (C++)": lambda: dist.all_reduce(x),
        "backend (Python)": lambda: dist.all_reduce(x, group=_state["py"]),
        "communicator": lambda: comm.allreduce(x),
        "gloo": lambda: dist.all_reduce(x, group=_state["gloo"]),
    }
    iters = ITERS[nbytes]
    for fn in methods.values():  # warm-up: connections, staging buffers, page faults
        for _ in range(3):
            fn()
    out: dict = {k: [] for k in methods}
    for _ in range(reps):
        for name, fn in methods.items():
            dist.barrier(group=_state["gloo"])
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            out[name].append((time.perf_counter() - t0) / iters)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    print(f"# {args.world} ranks, float32 sum, torch {torch.__version__}, {os.cpu_count()} cores; "
          f"median of {args.reps} blocks, time per call")
    with RankPool(args.world, backend="fastallreduce", threads=1) as pool:
        rows = []
        for nbytes in SIZES:
            per_rank = pool.run(_bench, nbytes, args.reps, timeout=600)
            # A collective ends when its slowest rank does: take the max over ranks per block.
            med = {k: statistics.median(max(r[k][i] for r in per_rank) for i in range(args.reps))
                   for k in per_rank[0]}
            rows.append((nbytes, med))
    names = list(rows[0][1])
    print("| size | " + " | ".join(f"{n} (µs)" for n in names) + " | C++ backend / communicator "
          "| Python backend / communicator |")
    print("|---" * (len(names) + 3) + "|")
    for nbytes, med in rows:
        size = f"{nbytes // 1024} KiB" if nbytes < (1 << 20) else f"{nbytes >> 20} MiB"
        cells = " | ".join(f"{med[n] * 1e6:.0f}" for n in names)
        c = med["communicator"]
        print(f"| {size} | {cells} | {med['backend (C++)'] / c:.3f} | {med['backend (Python)'] / c:.3f} |")


if __name__ == "__main__":
    main()
