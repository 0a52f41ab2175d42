"""The demo's experiment driver: the command-line options, and the loop over settings and seeds
that starts the workers and collects their epochs into one JSON document."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any

from ..bench.output import save_outputs
from .data import FASHION_MNIST_DIR, check_data, default_data
from .report import PAPER, SETTINGS, conclusions, format_table, plot, summarise
from .worker import _worker_epoch, _worker_finish, _worker_setup, milestones_for

# Setting -> WarmupSchedule's warmup argument.
_WARMUP_OF = {"baseline": None, "no warmup": None, "constant warmup": "constant", "gradual warmup": "gradual"}


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m fastallreduce demo``."""
    p = argparse.ArgumentParser(
        prog="python -m fastallreduce demo",
        description="Large-minibatch SGD (Goyal et al. 2017) in miniature: baseline vs linear scaling with no, "
                    "constant and gradual warmup, on an IDX data set (Fashion-MNIST) or scikit-learn's digits, k workers, "
                    "DDP + fastallreduce hook.")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs per run (default {DEFAULT['epochs']}, --full {FULL['epochs']}; decay "
                        "epochs keep the paper's proportions of its 90)")
    p.add_argument("--workers", type=int, default=2, help="worker processes k for the large minibatch (default 2)")
    p.add_argument("--base-workers", type=int, default=None,
                   help="worker processes for the baseline (default: --workers)")
    p.add_argument("--batch-per-worker", type=int, default=None,
                   help="per-worker batch n, also BatchNorm's batch (default 32, the paper's)")
    p.add_argument("--accum", type=int, default=None,
                   help="gradient accumulation steps of the large minibatch (default 16): "
                        "large minibatch = workers * n * accum (2 x 32 x 16 = 1024, 16x the baseline's 64)")
    p.add_argument("--base-lr", type=float, default=0.2,
                   help="learning rate of the baseline minibatch (default 0.2: the linear rule then gives the "
                        "large minibatch the paper's 3.2)")
    p.add_argument("--warmup-epochs", type=float, default=None,
                   help="warmup epochs (default: 1/6 of --epochs, at least 1; the paper's 5 of 90 counted in steps: "
                        "an epoch here has 58 large-minibatch steps against the paper's 156)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (default 1e-4, none on BN/bias)")
    p.add_argument("--width", type=int, default=8, help="channels of the first stage (default 8)")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"seeds per setting (default {DEFAULT['seeds']}, --full {FULL['seeds']})")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--data", default=default_data(),
                   help="a directory of IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-..., "
                        "each plain or .gz: Fashion-MNIST, MNIST, KMNIST), digits (1437 train / 360 test) or "
                        f"digits-shift (9x training set by 1-pixel shifts); default {FASHION_MNIST_DIR} when it "
                        "exists (Debian package dataset-fashion-mnist), else digits")
    p.add_argument("--train-size", type=int, default=None,
                   help=f"training examples, a fixed random subset (default {DEFAULT['train_size']}, --full: all)")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help="comma-separated subset of: " + ", ".join(SETTINGS))
    p.add_argument("--comm", default="fastallreduce", choices=("fastallreduce", "ddp"),
                   help="gradient allreduce: the fastallreduce DDP hook (default) or DDP's own gloo allreduce "
                        "(reference; exposed communication is then not measured)")
    p.add_argument("--out", default="results", help="output directory (default results/)")
    p.add_argument("--full", action="store_true",
                   help=f"the full run: all training examples, {FULL['epochs']} epochs, {FULL['seeds']} seeds "
                        "(about 40 minutes on an idle 2-core machine; the run in docs/demo.md)")
    p.add_argument("--quick", action="store_true", help="CI: 1 epoch, 2 workers, 1 seed, a slice of the data")
    p.add_argument("--report", metavar="JSON", default=None,
                   help="print the table and conclusions of a saved demo.json and redraw its plot into --out; "
                        "trains nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one epoch may take before aborting")
    return p


# The run lengths: the default, --full (docs/demo.md) and --quick (CI: one epoch of a 512-example
# slice, minibatches 16 and 64). Options given explicitly win over all three.
DEFAULT = {"epochs": 6, "seeds": 2, "train_size": 20000, "batch_per_worker": 32, "accum": 16}
FULL = {**DEFAULT, "epochs": 12, "seeds": 3, "train_size": None}
QUICK = {"epochs": 1, "seeds": 1, "train_size": None, "batch_per_worker": 8, "accum": 4}


def apply_preset(args: argparse.Namespace) -> None:
    """Fills the options left unset from --quick, --full or the default run."""
    if args.quick:
        args.workers, args.base_workers = 2, 2
    preset = QUICK if args.quick else FULL if args.full else DEFAULT
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


RECIPE_NAMES = ("SGD", "scaled_lr", "param_groups", "zero_init_last_bn", "WarmupSchedule")


def missing_recipe() -> list[str]:
    """Names of fastallreduce.optim that the demo needs and this build lacks (empty when complete)."""
    from .. import optim as far_optim

    return [n for n in RECIPE_NAMES if not hasattr(far_optim, n)]


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Runs every setting and seed; returns the JSON document (also written to ``args.out``)."""
    from ..bench import machine
    from ..launch import RankPool

    if args.report:
        with open(args.report) as f:
            return finish(json.load(f), args, log)
    missing = missing_recipe()
    if missing:  # fail before starting any process, with the reason
        raise SystemExit(f"the demo needs fastallreduce.optim.{{{', '.join(missing)}}}, which this build lacks")
    try:
        check_data(args.data)
    except (ValueError, OSError) as e:  # before starting any process, as above
        raise SystemExit(f"--data: {e}") from None

    apply_preset(args)
    base_workers = args.base_workers or args.workers
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        if s not in SETTINGS:
            raise SystemExit(f"unknown setting {s!r}; choose from {', '.join(SETTINGS)}")
    warmup_epochs = args.warmup_epochs if args.warmup_epochs is not None else max(1, round(args.epochs / 6))
    base_minibatch = base_workers * args.batch_per_worker
    seeds = list(range(args.seed, args.seed + args.seeds))
    doc: dict[str, Any] = {
        "tool": "demo", "machine": machine.describe(), "paper": PAPER,
        "command": "python -m fastallreduce " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("FASTALLREDUCE_", "OMP_", "GLOO_"))},
        "config": {"epochs": args.epochs, "workers": args.workers, "base_workers": base_workers,
                   "batch_per_worker": args.batch_per_worker, "accum": args.accum, "base_lr": args.base_lr,
                   "base_minibatch": base_minibatch, "warmup_epochs": warmup_epochs,
                   "weight_decay": args.weight_decay, "width": args.width, "seeds": seeds, "data": args.data,
                   "train_size": args.train_size, "quick": args.quick, "full": args.full, "comm": args.comm,
                   "milestones": milestones_for(args.epochs), "momentum": 0.9},
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
        # Seeds outermost: every setting has a run early, so a partial run already compares them.
        for seed in seeds:
            for setting in settings:
                world = base_workers if setting == "baseline" else args.workers
                accum = 1 if setting == "baseline" else args.accum
                if world not in pools:
                    # One process pool per world size, reused by all its runs (torch import paid once).
                    pools[world] = RankPool(world, threads=1, start_timeout=300.0)
                pool = pools[world]
                cfg = {"seed": seed, "width": args.width, "n": args.batch_per_worker, "accum": accum,
                       "base_lr": args.base_lr, "base_minibatch": base_minibatch,
                       "weight_decay": args.weight_decay, "warmup": _WARMUP_OF[setting],
                       "warmup_epochs": warmup_epochs, "epochs": args.epochs, "data": args.data,
                       "quick": args.quick, "comm": args.comm, "train_size": args.train_size}
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
                _save_partial(doc, args.out)
    finally:
        if progress is not None:
            progress.close()
        for p in pools.values():
            p.close()
    doc["total_s"] = time.perf_counter() - t_all
    partial = os.path.join(args.out, "demo.partial.json")
    if os.path.exists(partial):  # demo.json replaces it
        os.remove(partial)
    return finish(doc, args, log)


def _save_partial(doc: dict[str, Any], out: str) -> None:
    """The runs so far, in ``demo.partial.json`` (a long run can be looked at, or reported on, before it ends)."""
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, "demo.partial.json.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, os.path.join(out, "demo.partial.json"))


def finish(doc: dict[str, Any], args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Summary, conclusions, table and plot of a finished run (or of a saved one, ``--report``)."""
    doc["summary"] = summarise(doc)
    doc["conclusions"] = conclusions(doc)
    log(format_table(doc))
    log("")
    for c in doc["conclusions"]:
        log(f"* {c}")
    save_outputs(doc, args.out, "demo", None if args.no_plot else plot, log)
    return doc
