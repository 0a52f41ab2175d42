"""broadcast, all_gather_into_tensor and reduce_scatter_tensor on the fastallreduce backend vs gloo
and vs the Communicator's own broadcast / all_gather / reduce_scatter.

    PYTHONPATH=. GLOO_SOCKET_IFNAME=lo python benchmarks/backend_collectives.py [--world 2] [--reps 9]

Rank processes whose default group is on backend="fastallreduce" (these three run on the
engine's shared-memory path when every rank is on one host) and a gloo group over the same
ranks; float32, synchronous calls, `size` = bytes per rank (all_gather: each rank's input;
reduce_scatter: each rank's output). All three run in one process, in blocks whose order
rotates every round; the table shows the median call time of the slowest rank, gloo's time over the backend's, and the
backend's over the Communicator called directly (what torch.distributed's path adds).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastallreduce.launch import RankPool  # noqa: E402

SIZES = [4 * 1024, 1 << 20, 16 << 20]
_state: dict = {}


def _bench(nbytes: int, reps: int) -> dict:
    """Runs on every rank; returns {(collective, backend): [seconds per call]}."""
    warnings.simplefilter("ignore", FutureWarning)  # all_gather_into_tensor's rename notice
    if not _state:
        import fastallreduce as far

        _state["gloo"] = dist.new_group(list(range(dist.get_world_size())), backend="gloo")
        _state["comm"] = far.Communicator()
    k, n = dist.get_world_size(), nbytes // 4
    x, gathered, big, part = torch.ones(n), torch.empty(k * n), torch.ones(k * n), torch.empty(n)
    comm = _state["comm"]
    calls = {
        "broadcast": {"fastallreduce": lambda: dist.broadcast(x, src=0), "communicator": lambda: comm.broadcast(x, 0),
                      "gloo": lambda: dist.broadcast(x, src=0, group=_state["gloo"])},
        "all_gather_into_tensor": {"fastallreduce": lambda: dist.all_gather_into_tensor(gathered, x),
                                   "communicator": lambda: comm.all_gather(gathered, x),
                                   "gloo": lambda: dist.all_gather_into_tensor(gathered, x, group=_state["gloo"])},
        "reduce_scatter_tensor": {"fastallreduce": lambda: dist.reduce_scatter_tensor(part, big),
                                  "communicator": lambda: comm.reduce_scatter(part, big),
                                  "gloo": lambda: dist.reduce_scatter_tensor(part, big, group=_state["gloo"])},
    }
    iters = 20 if nbytes < (1 << 20) else 3
    out: dict = {}
    for rep in range(reps):
        for coll, methods in calls.items():
            # Blocks of calls, in an order that rotates every round: whichever block follows
            # gloo's pays for what Gloo's wake-ups leave behind (both ranks stacked on one core).
            names = list(methods)
            for name in names[rep % 3:] + names[:rep % 3]:
                fn = methods[name]
                fn()  # warm
                dist.barrier(group=_state["gloo"])
                for _ in range(iters):
                    t0 = time.perf_counter()
                    fn()
                    out.setdefault((coll, name), []).append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    print(f"# {args.world} ranks, float32, torch {torch.__version__}, {os.cpu_count()} cores; "
          f"median per call (slowest rank) over {args.reps} rounds of interleaved blocks")
    print("| collective | size per rank | fastallreduce backend (µs) | Communicator (µs) | gloo (µs) | "
          "gloo / backend | backend / Communicator |")
    print("|---|---|---|---|---|---|---|", flush=True)
    with RankPool(args.world, backend="fastallreduce", threads=1) as pool:
        for nbytes in SIZES:
            per_rank = pool.run(_bench, nbytes, args.reps, timeout=900)
            size = f"{nbytes // 1024} KiB" if nbytes < (1 << 20) else f"{nbytes >> 20} MiB"
            for coll in ("broadcast", "all_gather_into_tensor", "reduce_scatter_tensor"):
                med = {b: max(statistics.median(r[(coll, b)]) for r in per_rank)
                       for b in ("fastallreduce", "communicator", "gloo")}
                print(f"| {coll} | {size} | {med['fastallreduce'] * 1e6:.1f} | {med['communicator'] * 1e6:.1f} | "
                      f"{med['gloo'] * 1e6:.1f} | {med['gloo'] / med['fastallreduce']:.1f}× | "
                      f"{med['fastallreduce'] / med['communicator']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
