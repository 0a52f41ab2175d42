"""A miniature of Goyal et al.'s Table 1 and Figure 1: large-minibatch SGD with and without warmup.

    python -m fastallreduce demo                 # one finding (gradual warmup vs the baseline), 2 seeds
    python -m fastallreduce demo --full          # Table 1: all four settings, 3 seeds (docs/demo.md)
    python -m fastallreduce demo --sweep         # Figure 1: error against minibatch size, x1 .. x64, 2 seeds
    python -m fastallreduce demo --quick         # CI: 3 epochs, 2 workers, 1 seed

k worker processes (torch.distributed, gloo on loopback) train a small residual CNN on an IDX data
set (``--data DIR``; Fashion-MNIST from Debian's ``dataset-fashion-mnist`` by default when it is
installed) or on scikit-learn's 8x8 handwritten digits (``--data digits``, no download) with DDP and the
fastallreduce communication hook, following the paper's recipe: per-worker batch n fixed (so
BatchNorm statistics are per worker over n samples), the linear scaling rule from a baseline lr
tuned at the baseline minibatch (and nothing tuned for the large one), momentum 0.9, weight decay
1e-4 with none on BatchNorm and biases, zero-gamma init of each residual block's last BatchNorm,
warmup and multi-step decay at the paper's epochs (5; 30, 60, 80 of 90) scaled to the run's length.

Settings, each over several seeds (mean ± std):
  baseline         minibatch k·n,       lr = base lr
  no warmup        minibatch k·n·accum, lr = base lr · accum   (linear scaling rule)
  constant warmup  same, lr held at base lr for the warmup epochs, then the scaled lr
  gradual warmup   same, lr raised linearly every iteration from base lr to the scaled lr

The large minibatch is reached by gradient accumulation (``--accum``, DDP's ``no_sync``) and/or
more workers (``--workers`` with ``--base-workers`` for the baseline); a Table-1 large step may cover
at most 1 % of the training set (``--max-step-fraction``). The demo prints a table beside the paper's
figures, writes ``demo.json`` and ``demo.png`` (``sweep.json`` / ``sweep.png`` for ``--sweep``), saves
partial results after every run, judges the paper's findings on its own numbers
(:func:`~.report.paper_checks`, :func:`~.sweep.sweep_limit`) and ends with a plain-words paragraph.

The package, one job per module: :mod:`.data` (the data sets), :mod:`.model` (the network),
:mod:`.worker` (what each worker process runs), :mod:`.experiment` (options and the loop over
settings and seeds), :mod:`.report` (Table 1: summary, verdicts, table, plot) and :mod:`.sweep`
(Figure 1: summary, limit, table, plot).
"""
from __future__ import annotations

from typing import Optional, Sequence

from .data import load_data
from .experiment import RECIPE_NAMES, build_parser, missing_recipe, run
from .model import SmallResNet
from .report import PAPER, SETTINGS, conclusions, format_table, paper_checks, plain_words, plot, summarise
from .sweep import PAPER_CURVE, format_sweep, plot_sweep, summarise_sweep, sweep_conclusions, sweep_limit
from .worker import milestones_for

__all__ = ["main", "run", "build_parser", "missing_recipe", "load_data", "SmallResNet", "milestones_for", "PAPER",
           "SETTINGS", "RECIPE_NAMES", "summarise", "paper_checks", "conclusions", "format_table", "plot",
           "plain_words", "PAPER_CURVE", "summarise_sweep", "sweep_limit", "sweep_conclusions", "format_sweep",
           "plot_sweep"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    run(args)
    return 0
