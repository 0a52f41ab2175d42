"""SGD step benchmark on ResNet-50's parameter tensors: torch.optim.SGD (for-loop, foreach, fused)
against fastallreduce.optim.SGD, timed in one run on the same tensors.

    python -m fastallreduce.bench.sgd_step [--threads 1 2] [--repeats 15]

Effective bandwidth counts 20 bytes per parameter (read param, grad, buffer; write param,
buffer, all float32), next to a plain copy (8 bytes per element) as the machine's reference.
"""
import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch

__all__ = ["resnet50_shapes", "make_params", "hyperparameters", "optimizers", "run", "format_table", "main"]

BYTES_PER_PARAM = 20


def resnet50_shapes() -> list[tuple[int, ...]]:
    """Shapes of ResNet-50's 161 parameter tensors (25,557,032 parameters), in module order:
    stem conv + BN, 16 bottleneck blocks [3, 4, 6, 3] of width 64..512 (expansion 4, a 1x1
    projection + BN on each stage's first block), then the 1000-way classifier."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        out = width * 4
        for b in range(blocks):
            shapes += [(width, in_ch, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (out, width, 1, 1), (out,), (out,)]
            if b == 0:
                shapes += [(out, in_ch, 1, 1), (out,), (out,)]
            in_ch = out
    shapes += [(1000, 2048), (1000,)]
    return shapes


def make_params(seed: int = 0) -> list[torch.Tensor]:
    """ResNet-50's parameters (float32, small random values) with random gradients attached."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen) * 0.01 for s in resnet50_shapes()]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    return params


def optimizers(params: list[torch.Tensor], hp: dict) -> dict[str, Callable[[], torch.optim.Optimizer]]:
    """Constructors of the compared optimizers, by the name used in the table."""
    from ..optim import SGD
    return {
        "torch for-loop (foreach=False)": lambda: torch.optim.SGD(params, foreach=False, **hp),
        "torch foreach=True": lambda: torch.optim.SGD(params, foreach=True, **hp),
        "torch fused=True": lambda: torch.optim.SGD(params, fused=True, **hp),
        "fastallreduce SGD": lambda: SGD(params, **hp),
    }


def hyperparameters(momentum: float = 0.9, weight_decay: float = 1e-4, nesterov: bool = False) -> dict:
    """ImageNet recipe settings (lr kept small so that repeated steps stay finite)."""
    return {"lr": 1e-3, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov}


def run(threads: Sequence[int] = (1, 2), repeats: int = 15, warmup: int = 3, momentum: float = 0.9,
        weight_decay: float = 1e-4, nesterov: bool = False, verbose: bool = True) -> list[dict]:
    """Times one optimizer step of each implementation; returns one row per (threads, impl).

    Steps of the implementations are interleaved round by round so that background load hits
    them alike; each row reports the median. ``ratio_vs_fused`` / ``speedup_vs_loop`` compare
    with torch's fused and for-loop steps at the same thread count.
    """
    params = make_params()
    n = sum(p.numel() for p in params)
    hp = hyperparameters(momentum, weight_decay, nesterov)
    src, dst = torch.empty(n), torch.empty(n)
    src.fill_(1.0), dst.fill_(0.0)  # touch the pages before timing
    old_threads = torch.get_num_threads()
    rows: list[dict] = []
    try:
        for t in threads:
            torch.set_num_threads(t)
            opts = {name: make() for name, make in optimizers(params, hp).items()}
            for opt in opts.values():  # first steps allocate the momentum buffers
                for _ in range(warmup):
                    opt.step()
            times: dict[str, list[float]] = {name: [] for name in opts}
            times["copy (reference)"] = []
            for _ in range(repeats):
                for name, opt in opts.items():
                    t0 = time.perf_counter()
                    opt.step()
                    times[name].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                dst.copy_(src)
                times["copy (reference)"].append(time.perf_counter() - t0)
            med = {name: statistics.median(v) for name, v in times.items()}
            for name, sec in med.items():
                nbytes = 8 * n if name.startswith("copy") else BYTES_PER_PARAM * n
                rows.append({
                    "threads": t, "impl": name, "median_ms": sec * 1e3, "gb_per_s": nbytes / sec / 1e9,
                    "ratio_vs_fused": sec / med["torch fused=True"],
                    "speedup_vs_loop": med["torch for-loop (foreach=False)"] / sec,
                })
            del opts
    finally:
        torch.set_num_threads(old_threads)
    if verbose:
        print(format_table(rows, n))
    return rows


def format_table(rows: list[dict], nparams: int | None = None) -> str:
    head = f"{'threads':>7}  {'implementation':<32} {'median ms':>9} {'GB/s':>7} {'time/fused':>10} {'vs loop':>8}"
    lines = []
    if nparams:
        lines.append(f"SGD step, ResNet-50: 161 tensors, {nparams:,} float32 params, {BYTES_PER_PARAM} B/param")
    lines += [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['threads']:>7}  {r['impl']:<32} {r['median_ms']:>9.2f} {r['gb_per_s']:>7.1f} "
                     f"{r['ratio_vs_fused']:>10.2f} {r['speedup_vs_loop']:>7.2f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--nesterov", action="store_true")
    args = ap.parse_args(argv)
    return run(threads=args.threads, repeats=args.repeats, nesterov=args.nesterov)


if __name__ == "__main__":
    main()
