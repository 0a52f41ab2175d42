"""The DDP hook's own time per bucket: fastallreduce's allreduce_hook against torch's allreduce_hook
(torch.distributed.algorithms.ddp_comm_hooks.default_hooks, on a gloo group), in the same processes.

    PYTHONPATH=. GLOO_SOCKET_IFNAME=lo python benchmarks/hook_overhead.py [--world 2] [--buckets 64]
        [--bytes 4096] [--reps 15]

Each rank calls the hook on ``--buckets`` small buckets in a row, as DDP does in one backward, and
times only the calls (the hook returns a Future at once); the futures are waited for afterwards,
untimed. The two hooks alternate block by block. The table shows the median per-bucket call time
(the slowest rank's), and the step's wait for the futures after the last call.
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

from fastallreduce.launch import RankPool  # noqa: E402

_state: dict = {}


class _Bucket:
    """What a hook reads of DDP's GradBucket."""

    def __init__(self, buf: torch.Tensor, index: int, last: bool) -> None:
        self._buf, self._index, self._last = buf, index, last

    def buffer(self) -> torch.Tensor:
        return self._buf

    def index(self) -> int:
        return self._index

    def is_last(self) -> bool:
        return self._last

    def parameters(self) -> list:
        return []

    def gradients(self) -> list:
        return [self._buf]


def _setup(nbuckets: int, nbytes: int) -> None:
    import fastallreduce as far
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    state = far.ddp.HookState()
    gloo = dist.new_group(backend="gloo")
    n = max(1, nbytes // 4)
    ours = [_Bucket(torch.ones(n), i, i == nbuckets - 1) for i in range(nbuckets)]
    theirs = [_Bucket(torch.ones(n), i, i == nbuckets - 1) for i in range(nbuckets)]
    _state.update(hooks={"fastallreduce": (lambda b: far.ddp.allreduce_hook(state, b), ours),
                         "torch": (lambda b: default_hooks.allreduce_hook(gloo, b), theirs)},
                  state=state, gloo=gloo)
    for name in ("fastallreduce", "torch"):  # warm-up: registration, groups
        _block(name)


def _block(name: str) -> tuple:
    hook, buckets = _state["hooks"][name]
    for b in buckets:
        b.buffer().fill_(1.0)
    dist.barrier(group=_state["gloo"])
    futs = []
    t0 = time.perf_counter()
    for b in buckets:
        futs.append(hook(b))
    t1 = time.perf_counter()
    for f in futs:
        f.wait()
    t2 = time.perf_counter()
    return (t1 - t0) / len(buckets), t2 - t1


def _measure(reps: int) -> dict:
    out: dict = {"fastallreduce": [], "torch": []}
    for i in range(reps):
        for name in (("fastallreduce", "torch") if i % 2 == 0 else ("torch", "fastallreduce")):
            out[name].append(_block(name))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--buckets", type=int, default=64)
    ap.add_argument("--bytes", type=int, default=4096, help="bytes per bucket")
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args(argv)
    with RankPool(a.world, threads=1) as pool:
        pool.run(_setup, a.buckets, a.bytes, timeout=300)
        per_rank = pool.run(_measure, a.reps, timeout=600)
    print(f"# {a.world} ranks, {a.buckets} buckets of {a.bytes} B per step, {a.reps} steps per hook, "
          f"torch {torch.__version__}; median over steps of the slowest rank")
    print("| hook | call time per bucket (µs) | wait after the last call (µs) |")
    print("|---|---|---|")
    med = {}
    for name in ("fastallreduce", "torch"):
        calls = [max(r[name][i][0] for r in per_rank) for i in range(a.reps)]
        waits = [max(r[name][i][1] for r in per_rank) for i in range(a.reps)]
        med[name] = statistics.median(calls)
        print(f"| {name} | {med[name] * 1e6:.1f} | {statistics.median(waits) * 1e6:.1f} |")
    print(f"fastallreduce / torch, call time per bucket: {med['fastallreduce'] / med['torch']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
