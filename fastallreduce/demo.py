"""A miniature of Goyal et al.'s Table 1: large-minibatch SGD with and without warmup.

    python -m fastallreduce demo                 # defaults: a few minutes on 2 cores
    python -m fastallreduce demo --quick         # CI: 1 epoch, 2 workers, 1 seed

k worker processes (torch.distributed, gloo on loopback) train a small residual CNN on
scikit-learn's 8x8 handwritten digits (shipped with scikit-learn, no download) with DDP and the
fastallreduce communication hook, following the paper's recipe: per-worker batch n fixed (so
BatchNorm statistics are per worker over n samples), the linear scaling rule, momentum 0.9,
weight decay 1e-4 with none on BatchNorm and biases, zero-gamma init of each residual block's
last BatchNorm, multi-step decay at the paper's epochs scaled to the run's length.

Settings, each over several seeds (mean ± std):
  baseline         minibatch k·n,       lr = base lr
  no warmup        minibatch k·n·accum, lr = base lr · accum   (linear scaling rule)
  constant warmup  same, lr held at base lr for the warmup epochs, then the scaled lr
  gradual warmup   same, lr raised linearly every iteration from base lr to the scaled lr

The large minibatch is reached by gradient accumulation (``--accum``, DDP's ``no_sync``) and/or
more workers (``--workers`` with ``--base-workers`` for the baseline). It prints a table beside
the paper's figures, writes ``demo.json`` and ``demo.png`` (test error and training loss per
epoch for every run) and states what this run shows, computed from the numbers.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bench.output import save_outputs
from .models import BasicBlock

# The paper's Table 1 (ResNet-50 on ImageNet, top-1 validation error %, mean ± std of 5 runs).
PAPER = {
    "baseline": {"minibatch": 256, "lr": 0.1, "error": (23.60, 0.12)},
    "no warmup": {"minibatch": 8192, "lr": 3.2, "error": (24.84, 0.37)},
    "constant warmup": {"minibatch": 8192, "lr": 3.2, "error": (25.88, 0.56)},
    "gradual warmup": {"minibatch": 8192, "lr": 3.2, "error": (23.74, 0.09)},
}
SETTINGS = ("baseline", "no warmup", "constant warmup", "gradual warmup")
_WARMUP_OF = {"baseline": None, "no warmup": None, "constant warmup": "constant", "gradual warmup": "gradual"}


# ---------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------
def load_data(name: str = "digits", test_fraction: float = 0.2, quick: bool = False) -> dict[str, torch.Tensor]:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) float tensors in [0, 1], split stratified (fixed seed).

    ``digits-shift`` adds the eight one-pixel translations of every training image (9x the training
    set, still no download); the test set is unchanged.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, te = train_test_split(range(len(y)), test_size=test_fraction, random_state=0, stratify=d.target)
    xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    if quick:  # CI: a small slice keeps the run to seconds
        xtr, ytr, xte, yte = xtr[:512], ytr[:512], xte[:128], yte[:128]
    if name == "digits-shift":
        shifted = [xtr]
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dx or dy:
                    s = torch.roll(xtr, shifts=(dy, dx), dims=(2, 3))
                    # zero the wrapped-around row/column: a translation, not a rotation
                    if dy == 1:
                        s[:, :, 0, :] = 0
                    elif dy == -1:
                        s[:, :, -1, :] = 0
                    if dx == 1:
                        s[:, :, :, 0] = 0
                    elif dx == -1:
                        s[:, :, :, -1] = 0
                    shifted.append(s)
        xtr, ytr = torch.cat(shifted), ytr.repeat(len(shifted))
    elif name != "digits":
        raise ValueError(f"unknown data set {name!r}; choose digits or digits-shift")
    return {"xtr": xtr.contiguous(), "ytr": ytr, "xte": xte.contiguous(), "yte": yte}


class SmallResNet(nn.Module):
    """A residual CNN for 8x8 images: stem, two blocks at 8x8, two at 4x4, global pool, linear."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def milestones_for(epochs: int) -> tuple[int, ...]:
    """The paper's decay epochs 30, 60, 80 of 90, scaled to ``epochs`` (distinct, within the run)."""
    ms = sorted({max(1, round(epochs * m / 90)) for m in (30, 60, 80)})
    return tuple(m for m in ms if m < epochs)


# ---------------------------------------------------------------------------------------------
# worker side (module-level functions run by RankPool)
# ---------------------------------------------------------------------------------------------
_w: dict[str, Any] = {}


def _worker_setup(cfg: dict[str, Any]) -> dict[str, Any]:
    """Builds data, model, DDP with the fastallreduce hook, optimizer and schedule for one run."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import fastallreduce as far
    from fastallreduce import ddp as far_ddp
    from fastallreduce import optim as far_optim

    rank, world = dist.get_rank(), dist.get_world_size()
    if "data" not in _w or _w["data_key"] != (cfg["data"], cfg["quick"]):
        _w["data"] = load_data(cfg["data"], quick=cfg["quick"])
        _w["data_key"] = (cfg["data"], cfg["quick"])
    if "comm" not in _w and cfg["comm"] == "fastallreduce":  # one communicator per worker, shared by all runs (creating one is a collective)
        _w["comm"] = far.Communicator()
    torch.manual_seed(cfg["seed"])  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = SmallResNet(cfg["width"])
    far_optim.zero_init_last_bn(model)
    # broadcast_buffers=False: BatchNorm statistics stay per worker, as in the paper.
    with warnings.catch_warnings():
        # torch >= 2.13 deprecates broadcast_buffers but its replacement still syncs at init;
        # per-worker BN statistics need exactly broadcast_buffers=False (the warning says so too).
        warnings.simplefilter("ignore", FutureWarning)
        ddp = DDP(model, broadcast_buffers=False)
    # The hook under test; "ddp" keeps DDP's own gloo allreduce as a reference (no overlap statistics).
    state = far_ddp.register(ddp, communicator=_w["comm"]) if cfg["comm"] == "fastallreduce" else None
    minibatch = world * cfg["n"] * cfg["accum"]
    lr = far_optim.scaled_lr(minibatch, base_lr=cfg["base_lr"], reference_batch=cfg["base_minibatch"])
    opt = far_optim.SGD(far_optim.param_groups(model, cfg["weight_decay"]), lr=lr, momentum=0.9)
    n_train = len(_w["data"]["ytr"])
    iters_per_epoch = n_train // minibatch
    if iters_per_epoch < 1:
        raise ValueError(f"minibatch {minibatch} is larger than the training set ({n_train})")
    sched = far_optim.WarmupSchedule(
        opt, iters_per_epoch=iters_per_epoch, warmup=cfg["warmup"], warmup_epochs=cfg["warmup_epochs"],
        warmup_start_lr=cfg["base_lr"], milestones=milestones_for(cfg["epochs"]), gamma=0.1)
    _w.update(cfg=cfg, model=model, ddp=ddp, state=state, opt=opt, sched=sched, rank=rank, world=world,
              minibatch=minibatch, iters_per_epoch=iters_per_epoch)
    return {"minibatch": minibatch, "lr": lr, "iters_per_epoch": iters_per_epoch, "train_size": n_train,
            "test_size": len(_w["data"]["yte"]), "params": sum(p.numel() for p in model.parameters())}


def _worker_epoch(epoch: int) -> dict[str, Any]:
    """One epoch: one shuffle shared by all workers, split into per-worker batches of n; then test."""
    import torch.distributed as dist

    cfg, data, ddp, opt, sched, state = (_w[k] for k in ("cfg", "data", "ddp", "opt", "sched", "state"))
    rank, world, n, accum = _w["rank"], _w["world"], cfg["n"], cfg["accum"]
    g = torch.Generator().manual_seed(cfg["seed"] * 100003 + epoch)
    perm = torch.randperm(len(data["ytr"]), generator=g)  # identical on every worker
    ddp.train()
    loss_sum, micro = 0.0, 0
    losses = []
    lrs = []
    comm_s = exposed_s = 0.0
    nbytes = 0
    dist.barrier()
    t0 = time.perf_counter()
    for it in range(_w["iters_per_epoch"]):
        lrs.append(opt.param_groups[0]["lr"])
        for m in range(accum):
            start = ((it * accum + m) * world + rank) * n
            idx = perm[start:start + n]
            x, y = data["xtr"][idx], data["ytr"][idx]
            # Each worker's loss is its mean over n, divided by accum; DDP's hook averages over the
            # k workers, so the step uses the mean over the whole minibatch k·n·accum.
            if m < accum - 1:
                with ddp.no_sync():
                    loss = F.cross_entropy(ddp(x), y)
                    (loss / accum).backward()
            else:
                loss = F.cross_entropy(ddp(x), y)
                (loss / accum).backward()
            losses.append(float(loss.detach()))
            loss_sum += losses[-1]
            micro += 1
        st = state.stats() if state is not None else {}
        comm_s += st.get("comm_time_s", 0.0)
        exposed_s += st.get("exposed_s", 0.0)
        nbytes += int(st.get("bytes", 0))
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    train_s = time.perf_counter() - t0
    # Test error: every worker scores its share of the test set with its own BN statistics.
    ddp.eval()
    xte, yte = data["xte"][rank::world], data["yte"][rank::world]
    with torch.no_grad():
        pred = _w["model"](xte).argmax(1)
    q = max(1, len(losses) // 4)
    counts = torch.tensor([float((pred != yte).sum()), float(len(yte)), loss_sum, float(micro),
                           sum(losses[:q]) / q, sum(losses[-q:]) / q], dtype=torch.float64)
    dist.all_reduce(counts)
    counts[4:] /= world
    return {"epoch": epoch + 1, "test_error": 100.0 * float(counts[0] / counts[1]),
            "train_loss": float(counts[2] / counts[3]), "loss_first_quarter": float(counts[4]),
            "loss_last_quarter": float(counts[5]), "train_s": train_s, "comm_s": comm_s,
            "exposed_s": exposed_s, "bytes": nbytes, "lr_first": lrs[0], "lr_last": lrs[-1],
            "lr_max": max(lrs)}


def _worker_finish() -> None:
    for k in ("model", "ddp", "state", "opt", "sched"):
        _w.pop(k, None)


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastallreduce demo",
        description="Large-minibatch SGD (Goyal et al. 2017) in miniature: baseline vs linear scaling with no, "
                    "constant and gradual warmup, on scikit-learn's digits, k workers, DDP + fastallreduce hook.")
    p.add_argument("--epochs", type=int, default=18,
                   help="training epochs per run (default 18; warmup and decay epochs keep the paper's "
                        "proportions of its 90)")
    p.add_argument("--workers", type=int, default=2, help="worker processes k for the large minibatch (default 2)")
    p.add_argument("--base-workers", type=int, default=None,
                   help="worker processes for the baseline (default: --workers)")
    p.add_argument("--batch-per-worker", type=int, default=8, help="per-worker batch n (default 8)")
    p.add_argument("--accum", type=int, default=8,
                   help="gradient accumulation steps of the large minibatch (default 8): "
                        "large minibatch = workers * n * accum")
    p.add_argument("--base-lr", type=float, default=0.1,
                   help="learning rate of the baseline minibatch (default 0.1; the paper's 0.1 per 256)")
    p.add_argument("--warmup-epochs", type=int, default=None,
                   help="warmup epochs (default: the paper's 5 of 90, scaled to --epochs, at least 1)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (default 1e-4, none on BN/bias)")
    p.add_argument("--width", type=int, default=16, help="channels of the first stage (default 16)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per setting (default 3)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--data", default="digits", choices=("digits", "digits-shift"),
                   help="digits (1437 train / 360 test) or digits-shift (9x training set by 1-pixel shifts)")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help="comma-separated subset of: " + ", ".join(SETTINGS))
    p.add_argument("--comm", default="fastallreduce", choices=("fastallreduce", "ddp"),
                   help="gradient allreduce: the fastallreduce DDP hook (default) or DDP's own gloo allreduce "
                        "(reference; exposed communication is then not measured)")
    p.add_argument("--out", default="results", help="output directory (default results/)")
    p.add_argument("--quick", action="store_true", help="CI: 1 epoch, 2 workers, 1 seed, a slice of the data")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one epoch may take before aborting")
    return p


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


RECIPE_NAMES = ("SGD", "scaled_lr", "param_groups", "zero_init_last_bn", "WarmupSchedule")


def missing_recipe() -> list[str]:
    """Names of fastallreduce.optim that the demo needs and this build lacks (empty when complete)."""
    from . import optim as far_optim

    return [n for n in RECIPE_NAMES if not hasattr(far_optim, n)]


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Runs every setting and seed; returns the JSON document (also written to ``args.out``)."""
    from .bench import machine
    from .launch import RankPool

    missing = missing_recipe()
    if missing:  # fail before starting any process, with the reason
        raise SystemExit(f"the demo needs fastallreduce.optim.{{{', '.join(missing)}}}, which this build lacks")

    if args.quick:
        args.epochs, args.workers, args.seeds = 1, 2, 1
        args.base_workers = 2
    base_workers = args.base_workers or args.workers
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        if s not in SETTINGS:
            raise SystemExit(f"unknown setting {s!r}; choose from {', '.join(SETTINGS)}")
    warmup_epochs = args.warmup_epochs if args.warmup_epochs is not None else max(1, round(args.epochs * 5 / 90))
    base_minibatch = base_workers * args.batch_per_worker
    seeds = list(range(args.seed, args.seed + args.seeds))
    doc: dict[str, Any] = {
        "tool": "demo", "machine": machine.describe(), "paper": PAPER,
        "config": {"epochs": args.epochs, "workers": args.workers, "base_workers": base_workers,
                   "batch_per_worker": args.batch_per_worker, "accum": args.accum, "base_lr": args.base_lr,
                   "base_minibatch": base_minibatch, "warmup_epochs": warmup_epochs,
                   "weight_decay": args.weight_decay, "width": args.width, "seeds": seeds, "data": args.data,
                   "quick": args.quick, "comm": args.comm, "milestones": milestones_for(args.epochs), "momentum": 0.9},
        "runs": [],
    }
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=len(settings) * len(seeds) * args.epochs, desc="demo", unit="epoch",
                        file=sys.stderr, leave=False)
    pools: dict[int, Any] = {}
    t_all = time.perf_counter()
    try:
        for setting in settings:
            world = base_workers if setting == "baseline" else args.workers
            accum = 1 if setting == "baseline" else args.accum
            if world not in pools:
                # One process pool per world size, reused by all its runs (torch import paid once).
                pools[world] = RankPool(world, threads=1, start_timeout=300.0)
            pool = pools[world]
            for seed in seeds:
                cfg = {"seed": seed, "width": args.width, "n": args.batch_per_worker, "accum": accum,
                       "base_lr": args.base_lr, "base_minibatch": base_minibatch,
                       "weight_decay": args.weight_decay, "warmup": _WARMUP_OF[setting],
                       "warmup_epochs": warmup_epochs, "epochs": args.epochs, "data": args.data,
                       "quick": args.quick, "comm": args.comm}
                info = pool.run(_worker_setup, cfg, timeout=args.timeout)[0]
                curve = []
                for epoch in range(args.epochs):
                    if progress is not None:
                        progress.set_description(f"{setting} seed {seed}")
                    per_rank = pool.run(_worker_epoch, epoch, timeout=args.timeout)
                    e = dict(per_rank[0])
                    # Time of an epoch = the slowest worker's; exposed comm likewise.
                    for k in ("train_s", "comm_s", "exposed_s"):
                        e[k] = max(r[k] for r in per_rank)
                    curve.append(e)
                    if progress is not None:
                        progress.set_postfix(loss=f"{e['train_loss']:.3f}", err=f"{e['test_error']:.2f}%")
                        progress.update(1)
                pool.run(_worker_finish, timeout=60)
                doc["runs"].append({"setting": setting, "seed": seed, "workers": world, "accum": accum, **info,
                                    "curve": curve, "final_error": curve[-1]["test_error"],
                                    "wall_s": sum(e["train_s"] for e in curve),
                                    "comm_s": sum(e["comm_s"] for e in curve),
                                    "exposed_s": sum(e["exposed_s"] for e in curve)})
    finally:
        if progress is not None:
            progress.close()
        for p in pools.values():
            p.close()
    doc["total_s"] = time.perf_counter() - t_all
    doc["summary"] = summarise(doc)
    doc["conclusions"] = conclusions(doc)
    log(format_table(doc))
    log("")
    for c in doc["conclusions"]:
        log(f"* {c}")
    save_outputs(doc, args.out, "demo", None if args.no_plot else plot, log)
    return doc


def summarise(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per setting: mean ± std over seeds of final error, wall time and exposed communication."""
    out: dict[str, dict[str, Any]] = {}
    for setting in SETTINGS:
        runs = [r for r in doc["runs"] if r["setting"] == setting]
        if not runs:
            continue
        err = _mean_std([r["final_error"] for r in runs])
        loss = _mean_std([r["curve"][-1]["train_loss"] for r in runs])
        out[setting] = {
            "seeds": len(runs), "minibatch": runs[0]["minibatch"], "lr": runs[0]["lr"],
            "workers": runs[0]["workers"], "accum": runs[0]["accum"],
            "error_mean": err[0], "error_std": err[1], "final_loss_mean": loss[0], "final_loss_std": loss[1],
            "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
            "comm_s_mean": statistics.fmean(r["comm_s"] for r in runs),
            "exposed_s_mean": statistics.fmean(r["exposed_s"] for r in runs),
            "steps": runs[0]["iters_per_epoch"] * len(runs[0]["curve"]),
            "diverged": sum(1 for r in runs if not math.isfinite(r["curve"][-1]["train_loss"])),
        }
    return out


def _gap(doc: dict[str, Any], a: str, b: str) -> Optional[tuple[float, float]]:
    """err(a) - err(b) and its standard error (from the seeds' spread)."""
    s = doc["summary"]
    if a not in s or b not in s:
        return None
    ea, eb = s[a], s[b]
    se = math.sqrt(ea["error_std"] ** 2 / ea["seeds"] + eb["error_std"] ** 2 / eb["seeds"])
    return ea["error_mean"] - eb["error_mean"], se


def conclusions(doc: dict[str, Any]) -> list[str]:
    """What this run shows, in words, decided from its numbers (2 standard errors = 'clearly')."""
    s = doc["summary"]
    out = []
    test_size = next((r["test_size"] for r in doc["runs"]), 0)
    resolution = 100.0 / test_size if test_size else float("nan")

    def differs(g: tuple[float, float]) -> bool:
        # Differences under one test example, or within 2 standard errors, are not called a difference.
        return abs(g[0]) > max(2 * g[1], resolution)

    single = any(v["seeds"] < 2 for v in s.values())
    for name, v in s.items():
        if v["diverged"]:
            out.append(f"{name}: {v['diverged']} of {v['seeds']} runs diverged (training loss not finite)")
    g = _gap(doc, "no warmup", "baseline")
    if g:
        if differs(g) and g[0] > 0:
            out.append(f"large minibatch without warmup is worse than the baseline by {g[0]:.2f} points "
                       f"(± {g[1]:.2f}): the paper's optimisation difficulty shows here (paper: +1.24)")
        else:
            out.append(f"large minibatch without warmup is within noise of the baseline in test error ({g[0]:+.2f} "
                       f"± {g[1]:.2f} points), unlike the paper's +1.24")
    gap_exists = bool(g and differs(g) and g[0] > 0)
    g = _gap(doc, "gradual warmup", "baseline")
    if g:
        if differs(g) and g[0] > 0:
            out.append(f"gradual warmup does NOT close the gap on this task: still {g[0]:+.2f} ± {g[1]:.2f} points "
                       "worse than the baseline (paper: +0.14)")
        elif gap_exists:
            out.append(f"gradual warmup closes the gap: {g[0]:+.2f} ± {g[1]:.2f} points from the baseline "
                       "(paper: +0.14)")
        else:
            out.append(f"gradual warmup is within noise of the baseline ({g[0]:+.2f} ± {g[1]:.2f} points; paper: "
                       "+0.14), but with no gap from the large minibatch alone there was none for it to close here")
    # Each warmup against none: (name, the paper's gap, how to word a lower / a higher error).
    for name, paper, lower, higher in (("gradual warmup", "-1.10, better", "better", "worse"),
                                       ("constant warmup", "+1.04", "better, unlike the paper", "worse, as in the paper")):
        g = _gap(doc, name, "no warmup")
        if not g:
            continue
        if differs(g):
            out.append(f"{name} vs no warmup: {g[0]:+.2f} ± {g[1]:.2f} points "
                       f"({lower if g[0] < 0 else higher}; paper: {paper})")
        else:
            out.append(f"{name} vs no warmup: no clear difference ({g[0]:+.2f} ± {g[1]:.2f}; "
                       f"paper: {paper.split(',')[0]})")
    # The paper's Figure 2 compares training curves: the final training loss says whether the large
    # minibatch optimises as well as the baseline, which test error on 360 images may be too coarse to show.
    if "baseline" in s:
        b = s["baseline"]
        verdicts = {}
        for name in ("no warmup", "constant warmup", "gradual warmup"):
            if name not in s:
                continue
            v = s[name]
            se = math.sqrt(v["final_loss_std"] ** 2 / v["seeds"] + b["final_loss_std"] ** 2 / b["seeds"])
            d = v["final_loss_mean"] - b["final_loss_mean"]
            verdicts[name] = "higher" if d > 2 * se else ("lower" if d < -2 * se else "within noise")
        if verdicts:
            line = f"final training loss: baseline {b['final_loss_mean']:.4f}; " + ", ".join(
                f"{n} {s[n]['final_loss_mean']:.4f} ({v})" for n, v in verdicts.items())
            if verdicts.get("gradual warmup") == "higher":
                line += ": gradual warmup does NOT bring the training loss down to the baseline's here"
            out.append(line + " (paper: with gradual warmup the large-minibatch training curve matches the baseline's)")
    if single:
        # No spread to judge by: say so on every comparison rather than overclaim.
        out = ["only one seed per setting: no spread to judge differences by; the comparisons below are anecdotes"] + [
            f"(1 seed) {c}" for c in out]
    if "baseline" in s:
        large = [k for k in s if k != "baseline"]
        if large:
            b = s["baseline"]
            l = s[large[0]]
            out.append(f"time: the large minibatch makes {l['steps']} steps against the baseline's {b['steps']}; "
                       f"wall {l['wall_s_mean']:.1f} s vs {b['wall_s_mean']:.1f} s per run, exposed communication "
                       f"{l['exposed_s_mean']:.2f} s vs {b['exposed_s_mean']:.2f} s")
    return out


def format_table(doc: dict[str, Any]) -> str:
    """The results table, with the paper's Table 1 beside it."""
    c = doc["config"]
    lines = [
        f"Large-minibatch SGD on digits ({c['data']}), {c['epochs']} epochs, n = {c['batch_per_worker']} per worker, "
        f"warmup {c['warmup_epochs']} epochs, decay x0.1 at epochs {list(c['milestones'])}, {len(c['seeds'])} seed(s), "
        f"gradients averaged by {'the fastallreduce DDP hook' if c.get('comm') == 'fastallreduce' else 'DDP (gloo)'}",
        "",
        f"| {'setting':<16}| {'k x n x accum':>14} | {'minibatch':>9} | {'lr':>6} | {'final error %':>15} | "
        f"{'wall s':>7} | {'exposed comm s':>14} || paper kn | paper lr | paper error % |",
        "|" + "-" * 17 + "|" + "-" * 16 + "|" + "-" * 11 + "|" + "-" * 8 + "|" + "-" * 17 + "|" + "-" * 9 + "|"
        + "-" * 16 + "||" + "-" * 10 + "|" + "-" * 10 + "|" + "-" * 15 + "|",
    ]
    for name, v in doc["summary"].items():
        p = PAPER[name]
        shape = f"{v['workers']}x{c['batch_per_worker']}x{v['accum']}"
        err = f"{v['error_mean']:.2f} ± {v['error_std']:.2f}"
        exposed = f"{v['exposed_s_mean']:.2f} ({100 * v['exposed_s_mean'] / max(v['wall_s_mean'], 1e-9):.1f}%)"
        if c.get("comm") != "fastallreduce":
            exposed = "n/a"
        lines.append(f"| {name:<16}| {shape:>14} | {v['minibatch']:>9} | {v['lr']:>6.3g} | {err:>15} | "
                     f"{v['wall_s_mean']:>7.1f} | {exposed:>14} || {p['minibatch']:>8} | {p['lr']:>8} | "
                     f"{p['error'][0]:.2f} ± {p['error'][1]:.2f} |")
    lines.append("")
    lines.append("final error: test error after the last epoch, mean ± std over seeds; wall s: training time per run "
                 "(slowest worker, evaluation excluded); exposed comm: time the last gradient bucket was still "
                 "being reduced after backward ended, summed over steps (share of wall time)")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: str) -> None:
    """Test error and training loss against epoch for every run (thin) and each setting's mean (thick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_err, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = {"baseline": "black", "no warmup": "C3", "constant warmup": "C1", "gradual warmup": "C0"}
    for setting in SETTINGS:
        runs = [r for r in doc["runs"] if r["setting"] == setting]
        if not runs:
            continue
        col = colors[setting]
        epochs = [e["epoch"] for e in runs[0]["curve"]]
        for r in runs:
            ax_err.plot(epochs, [e["test_error"] for e in r["curve"]], color=col, lw=0.6, alpha=0.35)
            ax_loss.plot(epochs, [e["train_loss"] for e in r["curve"]], color=col, lw=0.6, alpha=0.35)
        mean_err = [statistics.fmean(r["curve"][i]["test_error"] for r in runs) for i in range(len(epochs))]
        mean_loss = [statistics.fmean(r["curve"][i]["train_loss"] for r in runs) for i in range(len(epochs))]
        v = doc["summary"][setting]
        label = f"{setting} (kn={v['minibatch']}, lr={v['lr']:.3g})"
        ax_err.plot(epochs, mean_err, color=col, lw=2, label=label, marker="o", ms=3)
        ax_loss.plot(epochs, mean_loss, color=col, lw=2, label=label, marker="o", ms=3)
    c = doc["config"]
    for ax in (ax_err, ax_loss):
        ax.axvline(c["warmup_epochs"] + 0.5, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_err.set_ylabel("test error %")
    ax_err.set_yscale("log")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_yscale("log")
    ax_err.set_title("test error (thin: each seed; thick: mean)")
    ax_loss.set_title("training loss")
    fig.suptitle(f"Large-minibatch SGD in miniature: digits, {c['workers']} workers, n={c['batch_per_worker']}, "
                 f"{c['epochs']} epochs, warmup {c['warmup_epochs']} epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
