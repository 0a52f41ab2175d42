"""A miniature of Goyal et al.'s Table 1: large-minibatch SGD with and without warmup.

    python -m fastallreduce demo                 # about 5 minutes on 2 cores: 20,000 images, 6 epochs, 2 seeds
    python -m fastallreduce demo --full          # about 40 minutes: 60,000 images, 12 epochs, 3 seeds (docs/demo.md)
    python -m fastallreduce demo --quick         # CI: 1 epoch, 2 workers, 1 seed

k worker processes (torch.distributed, gloo on loopback) train a small residual CNN on an IDX data
set (``--data DIR``; Fashion-MNIST from Debian's ``dataset-fashion-mnist`` by default when it is
installed) or on scikit-learn's 8x8 handwritten digits (``--data digits``, no download) with DDP and the
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
the paper's figures, writes ``demo.json`` and ``demo.png`` (training error, as in the paper's
Figure 2, and test error per epoch for every run) and states what this run shows, computed from
the numbers: first whether the paper's two findings hold (:func:`~.report.paper_checks`).

The package, one job per module: :mod:`.data` (the data sets), :mod:`.model` (the network),
:mod:`.worker` (what each worker process runs), :mod:`.experiment` (options and the loop over
settings and seeds) and :mod:`.report` (summary, conclusions, table, plot).
"""
from __future__ import annotations

from typing import Optional, Sequence

from .data import load_data
from .experiment import RECIPE_NAMES, build_parser, missing_recipe, run
from .model import SmallResNet
from .report import PAPER, SETTINGS, conclusions, format_table, paper_checks, plot, summarise
from .worker import milestones_for

__all__ = ["main", "run", "build_parser", "missing_recipe", "load_data", "SmallResNet", "milestones_for", "PAPER",
           "SETTINGS", "RECIPE_NAMES", "summarise", "paper_checks", "conclusions", "format_table", "plot"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    run(args)
    return 0
