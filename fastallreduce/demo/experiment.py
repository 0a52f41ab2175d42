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
from .data import FASHION_MNIST_DIR, check_data, default_data, train_count
from .report import PAPER, SETTINGS, conclusions, finding_pairs, format_table, plain_words, plot, summarise
from .sweep import format_sweep, plot_sweep, summarise_sweep, sweep_conclusions
from .worker import worker_epoch, worker_finish, worker_setup, milestones_for

# Setting -> WarmupSchedule's warmup argument.
_WARMUP_OF = {"baseline": None, "no warmup": None, "constant warmup": "constant", "gradual warmup": "gradual"}


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m fastallreduce demo``."""
    p = argparse.ArgumentParser(
        prog="python -m fastallreduce demo",
        description="Large-minibatch SGD (Goyal et al. 2017) in miniature: baseline vs linear scaling with no, "
                    "constant and gradual warmup (Table 1, --full), error against minibatch size (Figure 1, "
                    "--sweep), on an IDX data set (Fashion-MNIST) or scikit-learn's digits, k workers, "
                    "DDP + fastallreduce hook.")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs per run (default {DEFAULT['epochs']}, --full and --sweep {FULL['epochs']}; "
                        "warmup and decay epochs keep the paper's proportions of its 90)")
    p.add_argument("--workers", type=int, default=2, help="worker processes k for the large minibatch (default 2)")
    p.add_argument("--base-workers", type=int, default=None,
                   help="worker processes for the baseline (default: --workers)")
    p.add_argument("--batch-per-worker", type=int, default=None,
                   help=f"per-worker batch n, also BatchNorm's batch (default {DEFAULT['batch_per_worker']})")
    p.add_argument("--accum", type=int, default=None,
                   help=f"gradient accumulation steps of the large minibatch (default {DEFAULT['accum']}): "
                        "large minibatch = workers * n * accum, standing in for accum times more workers")
    p.add_argument("--base-lr", type=float, default=None,
                   help=f"learning rate of the baseline minibatch (default {DEFAULT['base_lr']}, the best of the "
                        "baseline-lr sweep in docs/demo.md); larger minibatches take it times their ratio to the "
                        "baseline's (the linear scaling rule)")
    p.add_argument("--warmup-epochs", type=float, default=None,
                   help="warmup epochs (default: the paper's 5 of 90, scaled to --epochs)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (default 1e-4, none on BN/bias)")
    p.add_argument("--width", type=int, default=None,
                   help=f"channels of the first stage (default {DEFAULT['width']})")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"seeds per setting (default {DEFAULT['seeds']}, --full {FULL['seeds']}, --sweep "
                        f"{SWEEP['seeds']})")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--data", default=default_data(),
                   help="a directory of IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-..., "
                        "each plain or .gz: Fashion-MNIST, MNIST, KMNIST), digits (1437 train / 360 test) or "
                        f"digits-shift (9x training set by 1-pixel shifts); default {FASHION_MNIST_DIR} when it "
                        "exists (Debian package dataset-fashion-mnist), else digits")
    p.add_argument("--train-size", type=int, default=None,
                   help="training examples, a fixed random subset (default: all)")
    p.add_argument("--settings", default=None,
                   help="comma-separated subset of: " + ", ".join(SETTINGS) +
                        f" (default {DEFAULT['settings']}; --full: all four)")
    p.add_argument("--multipliers", default=None,
                   help=f"--sweep: minibatch sizes as multiples of the baseline's (default {SWEEP['multipliers']})")
    p.add_argument("--max-step-fraction", type=float, default=1.0,
                   help="refuse a Table-1 large minibatch covering more than this %% of the training set in one "
                        "step (default 1.0; the paper's 8k covers 0.64 %% of ImageNet)")
    p.add_argument("--comm", default="fastallreduce", choices=("fastallreduce", "ddp"),
                   help="gradient allreduce: the fastallreduce DDP hook (default) or DDP's own gloo allreduce "
                        "(reference; exposed communication is then not measured)")
    p.add_argument("--out", default="results", help="output directory (default results/)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true",
                      help=f"Table 1: all four settings, {FULL['seeds']} seeds each (docs/demo.md)")
    mode.add_argument("--sweep", action="store_true",
                      help="Figure 1: final error against minibatch size, linear rule and gradual warmup")
    p.add_argument("--quick", action="store_true",
                   help="CI: 3 epochs, 2 workers, 1 seed, a slice of the data (with --sweep: minibatch x1 and x2)")
    p.add_argument("--report", metavar="JSON", default=None,
                   help="print the table and conclusions of a saved demo.json (or sweep.json) and redraw its "
                        "plot into --out; trains nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one epoch may take before aborting")
    return p


# The run lengths: the default (one finding, within 5 minutes), --full (Table 1), --sweep (Figure 1)
# and --quick (CI: 3 epochs of a 512-example slice). Options given explicitly win over all of them.
# Why each value matches the paper's set-up: docs/demo.md.
DEFAULT = {"epochs": 3, "seeds": 2, "train_size": None, "batch_per_worker": 16, "accum": 16, "base_lr": 0.1,
           "width": 8, "settings": "baseline,gradual warmup", "multipliers": "1"}
FULL = {**DEFAULT, "epochs": 12, "seeds": 3, "settings": ",".join(SETTINGS)}
SWEEP = {**DEFAULT, "epochs": 12, "seeds": 2, "multipliers": "1,2,4,8,16,32,64"}
# --quick: 3 epochs, since one epoch of the 512-example slice (32 steps) leaves this miniature's
# baseline at chance (89-92 % test error on digits), and CI's smoke run checks that it learns.
QUICK = {**DEFAULT, "epochs": 3, "seeds": 1, "batch_per_worker": 8, "accum": 4, "settings": ",".join(SETTINGS),
         "multipliers": "1,2"}


def apply_preset(args: argparse.Namespace) -> None:
    """Fills the options left unset from --quick, --full, --sweep or the default run."""
    if args.quick:
        args.workers, args.base_workers = 2, 2
    preset = QUICK if args.quick else FULL if args.full else SWEEP if args.sweep else DEFAULT
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if isinstance(args.multipliers, str):
        args.multipliers = parse_multipliers(args.multipliers, args.workers, args.base_workers or args.workers)


def parse_multipliers(text: str, workers: int, base_workers: int) -> list[int]:
    """``--multipliers``: distinct positive integers, ascending, starting at 1 (the baseline), each a
    whole number of accumulation steps on ``workers``."""
    try:
        ms = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise SystemExit(f"--multipliers: {text!r} is not a comma-separated list of integers") from None
    if not ms or ms[0] != 1:
        raise SystemExit(f"--multipliers must start at 1, the baseline (got {text!r})")
    bad = [m for m in ms if m > 1 and (m * base_workers) % workers]
    if bad:
        raise SystemExit(f"--multipliers {bad}: the minibatch must be a whole number of accumulation steps on "
                         f"{workers} workers")
    return ms


def warmup_epochs_for(epochs: int) -> float:
    """The paper's 5 warmup epochs of 90, scaled to ``epochs`` (at least one epoch's worth of steps is
    not required: the proportion of training is what is kept)."""
    return epochs * 5 / 90


RECIPE_NAMES = ("SGD", "scaled_lr", "param_groups", "zero_init_last_bn", "WarmupSchedule")


def missing_recipe() -> list[str]:
    """Names of fastallreduce.optim that the demo needs and this build lacks (empty when complete)."""
    from .. import optim as far_optim

    return [n for n in RECIPE_NAMES if not hasattr(far_optim, n)]


def check_step_fraction(args: argparse.Namespace, base_minibatch: int, settings: list[str]) -> None:
    """Refuses (before any process starts) a Table-1 run whose large minibatch covers more than
    ``--max-step-fraction`` % of the training set in one step: past about 1 % small-scale runs lose the
    linear rule and warmup's effect, and the paper's 8k covers 0.64 % of ImageNet. --quick (CI's
    512-example slice) and --sweep (Figure 1 goes past the cap by design) are exempt."""
    if args.quick or args.sweep or settings == ["baseline"]:
        return
    n_train = train_count(args.data, args.quick, args.train_size)
    large = args.workers * args.batch_per_worker * args.accum
    fraction = 100.0 * large / n_train
    if fraction > args.max_step_fraction:
        raise SystemExit(f"one step of the large minibatch ({args.workers} x {args.batch_per_worker} x {args.accum} = "
                         f"{large}) covers {fraction:.2f} % of the {n_train} training examples, more than "
                         f"--max-step-fraction {args.max_step_fraction:g} % (the paper's 8k: 0.64 % of ImageNet); "
                         "use a smaller --accum or more training examples")


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
    if args.sweep:
        settings = ["baseline", "gradual warmup"]
    for s in settings:
        if s not in SETTINGS:
            raise SystemExit(f"unknown setting {s!r}; choose from {', '.join(SETTINGS)}")
    warmup_epochs = args.warmup_epochs if args.warmup_epochs is not None else warmup_epochs_for(args.epochs)
    base_minibatch = base_workers * args.batch_per_worker
    check_step_fraction(args, base_minibatch, settings)
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
                   "milestones": milestones_for(args.epochs), "momentum": 0.9,
                   "mode": "sweep" if args.sweep else "table", "multipliers": args.multipliers},
        "runs": [],
    }
    jobs = _jobs(args, settings, seeds, base_workers)
    checks = ("Figure 1: the largest minibatch that keeps the baseline's error" if args.sweep else
              "; ".join(name for _, name in finding_pairs(settings)) or "none of the paper's findings")
    log(f"[demo] {len(jobs)} runs of {args.epochs} epochs ({len(seeds)} seed(s)); checks {checks}; "
        "full results: --full (Table 1), --sweep (Figure 1)")
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=len(jobs) * args.epochs, desc="demo", unit="epoch", file=sys.stderr, leave=False)
    pools: dict[int, Any] = {}
    t_all = time.perf_counter()
    try:
        for job in jobs:
            world = job["workers"]
            if world not in pools:
                # One process pool per world size, reused by all its runs (torch import paid once).
                pools[world] = RankPool(world, threads=1, start_timeout=300.0)
            doc["runs"].append(_train(pools[world], job, args, base_minibatch, warmup_epochs, progress))
            _save_partial(doc, args.out)
    finally:
        if progress is not None:
            progress.close()
        for p in pools.values():
            p.close()
    doc["total_s"] = time.perf_counter() - t_all
    partial = _partial_path(doc, args.out)
    if os.path.exists(partial):  # demo.json / sweep.json replaces it
        os.remove(partial)
    return finish(doc, args, log)


def _jobs(args: argparse.Namespace, settings: list[str], seeds: list[int], base_workers: int) -> list[dict[str, Any]]:
    """The runs to make, in order. Table 1: every setting per seed (seeds outermost, so a partial run
    already compares the settings). Figure 1 (``--sweep``): every minibatch multiplier per seed, the
    baseline (x1) without warmup and every larger one with gradual warmup."""
    jobs = []
    for seed in seeds:
        if args.sweep:
            for m in args.multipliers:
                jobs.append({"setting": "baseline" if m == 1 else "gradual warmup", "seed": seed,
                             "workers": base_workers if m == 1 else args.workers,
                             "accum": m * base_workers // args.workers if m > 1 else 1, "multiplier": m})
        else:
            for setting in settings:
                base = setting == "baseline"
                jobs.append({"setting": setting, "seed": seed, "workers": base_workers if base else args.workers,
                             "accum": 1 if base else args.accum,
                             "multiplier": 1 if base else args.workers * args.accum // base_workers})
    return jobs


def _train(pool: Any, job: dict[str, Any], args: argparse.Namespace, base_minibatch: int, warmup_epochs: float,
           progress: Any) -> dict[str, Any]:
    """One run (a setting and a seed) on the pool's workers; its record for the JSON document."""
    cfg = {"seed": job["seed"], "width": args.width, "n": args.batch_per_worker, "accum": job["accum"],
           "base_lr": args.base_lr, "base_minibatch": base_minibatch, "weight_decay": args.weight_decay,
           "warmup": _WARMUP_OF[job["setting"]], "warmup_epochs": warmup_epochs, "epochs": args.epochs,
           "data": args.data, "quick": args.quick, "comm": args.comm, "train_size": args.train_size}
    info = pool.run(worker_setup, cfg, timeout=args.timeout)[0]
    curve = []
    for epoch in range(args.epochs):
        if progress is not None:
            progress.set_description(f"{job['setting']} x{job['multiplier']} seed {job['seed']}")
        per_rank = pool.run(worker_epoch, epoch, timeout=args.timeout)
        e = dict(per_rank[0])
        # Time of an epoch = the slowest worker's; exposed comm likewise.
        for k in ("train_s", "cpu_s", "comm_s", "exposed_s"):
            e[k] = max(r[k] for r in per_rank)
        curve.append(e)
        if progress is not None:
            progress.set_postfix(loss=f"{e['train_loss']:.3f}", err=f"{e['test_error']:.2f}%")
            progress.update(1)
    pool.run(worker_finish, timeout=60)
    return {**job, **info, "curve": curve, "final_error": curve[-1]["test_error"],
            "wall_s": sum(e["train_s"] for e in curve), "cpu_s": sum(e["cpu_s"] for e in curve),
            "comm_s": sum(e["comm_s"] for e in curve),
            "exposed_s": sum(e["exposed_s"] for e in curve)}


def _stem(doc: dict[str, Any]) -> str:
    return "sweep" if doc["config"].get("mode") == "sweep" else "demo"


def _partial_path(doc: dict[str, Any], out: str) -> str:
    return os.path.join(out, f"{_stem(doc)}.partial.json")


def _save_partial(doc: dict[str, Any], out: str) -> None:
    """The runs so far, in ``demo.partial.json`` or ``sweep.partial.json`` (a long run can be looked at,
    or reported on with ``--report``, before it ends)."""
    os.makedirs(out, exist_ok=True)
    path = _partial_path(doc, out)
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.replace(path + ".tmp", path)


def finish(doc: dict[str, Any], args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Summary, conclusions, table, plain-words ending and plot of a finished run (or of a saved one,
    ``--report``)."""
    if _stem(doc) == "sweep":
        doc["sweep"] = summarise_sweep(doc)
        doc["conclusions"] = sweep_conclusions(doc)
        table, plotter = format_sweep(doc), plot_sweep
    else:
        doc["summary"] = summarise(doc)
        doc["conclusions"] = conclusions(doc) + [plain_words(doc)]
        table, plotter = format_table(doc), plot
    log(table)
    log("")
    for c in doc["conclusions"]:
        log(f"* {c}")
    save_outputs(doc, args.out, _stem(doc), None if args.no_plot else plotter, log)
    return doc
