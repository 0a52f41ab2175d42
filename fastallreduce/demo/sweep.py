"""The demo's Figure 1 in miniature: final test error against minibatch size, every point trained with
the linear scaling rule and gradual warmup, beside the paper's ImageNet curve on a common axis (the
share of the training set one step covers). The bookkeeping (summary, the limit, the table) is
separate from the plot so that tests can check it on made-up documents."""
from __future__ import annotations

import math
import statistics
from typing import Any, Optional

from .data import data_title

#: The paper's Figure 1 (ResNet-50, ImageNet, gradual warmup and the linear rule): kn -> top-1 error %.
PAPER_CURVE = {128: 23.49, 512: 23.48, 1024: 23.53, 2048: 23.49, 4096: 23.56, 8192: 23.74, 16384: 24.79,
               32768: 27.55, 65536: 33.96}
#: The paper's baseline (kn = 256, Table 1): mean and std of 5 runs.
PAPER_BASELINE = {"minibatch": 256, "error": (23.60, 0.12)}
#: ImageNet-1k's training images: the denominator of the paper's fraction of the data per step.
IMAGENET_TRAIN = 1281167


def summarise_sweep(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per minibatch size, smallest first: seeds, mean ± std of the final test error, lr,
    steps per epoch and ``fraction`` (% of the training set per step)."""
    by_mb: dict[int, list[dict[str, Any]]] = {}
    for r in doc["runs"]:
        by_mb.setdefault(r["minibatch"], []).append(r)
    points = []
    for mb in sorted(by_mb):
        runs = by_mb[mb]
        errs = [r["final_error"] for r in runs]
        points.append({"minibatch": mb, "multiplier": runs[0].get("multiplier", 1), "seeds": len(runs),
                       "lr": runs[0]["lr"], "iters_per_epoch": runs[0]["iters_per_epoch"],
                       "fraction": 100.0 * mb / runs[0]["train_size"],
                       "error_mean": statistics.fmean(errs),
                       "error_std": statistics.stdev(errs) if len(errs) > 1 else 0.0,
                       "diverged": sum(1 for r in runs if not math.isfinite(r["curve"][-1]["train_loss"]))})
    return points


def sweep_limit(points: list[dict[str, Any]], base_mean: float, base_std: float) -> Optional[dict[str, Any]]:
    """The largest point up to which every point's error stays within twice the baseline's seed-std of
    the baseline's (no more than ``base_mean + 2 * base_std``; lower is fine); None when even the
    smallest does not. On the paper's numbers (23.60 ± 0.12) that is 8k: 23.74 <= 23.84 < 24.79."""
    limit = None
    for p in sorted(points, key=lambda p: p["minibatch"]):
        if p["error_mean"] - base_mean > 2.0 * base_std:
            break
        limit = p
    return limit


def paper_points() -> list[dict[str, Any]]:
    """The paper's Figure 1 as points of :func:`summarise_sweep`'s shape."""
    return [{"minibatch": mb, "fraction": 100.0 * mb / IMAGENET_TRAIN, "error_mean": e, "error_std": 0.0}
            for mb, e in PAPER_CURVE.items()]


def paper_limit() -> dict[str, Any]:
    """:func:`sweep_limit` on the paper's own numbers (8k)."""
    limit = sweep_limit(paper_points(), *PAPER_BASELINE["error"])
    assert limit is not None
    return limit


def sweep_conclusions(doc: dict[str, Any]) -> list[str]:
    """What the sweep shows: the largest minibatch that keeps the baseline's error (the baseline is the
    smallest point), beside the paper's, and a plain-words paragraph to end on."""
    points = doc["sweep"]
    if not points:
        return ["no runs"]
    base = points[0]
    pl = paper_limit()
    paper = f"the paper: {pl['minibatch']} ({pl['fraction']:.2f} % of ImageNet per step)"
    if base["seeds"] < 2:
        return [f"one seed at the baseline ({base['minibatch']}): no spread to judge by; {paper}"]
    limit = sweep_limit(points, base["error_mean"], base["error_std"])
    bar = base["error_mean"] + 2 * base["error_std"]
    out = []
    if limit is None:
        out.append(f"no minibatch stays within twice the baseline's seed-std (error <= {bar:.2f} %); {paper}")
        return out
    beyond = [p for p in points if p["minibatch"] > limit["minibatch"]]
    text = (f"the largest minibatch whose final test error stays within twice the baseline's seed-std of the "
            f"baseline's ({base['error_mean']:.2f} ± {base['error_std']:.2f} % at {base['minibatch']}, so <= {bar:.2f} %): "
            f"{limit['minibatch']} ({limit['multiplier']}x, {limit['fraction']:.2f} % of the training set per step, "
            f"{limit['error_mean']:.2f} %); {paper}")
    if beyond:
        b = beyond[0]
        text += f"; beyond it, {b['minibatch']} ({b['fraction']:.2f} % per step) ends at {b['error_mean']:.2f} %"
    else:
        text += "; the rule did not break within the sizes tried"
    out.append(text)
    out.append(f"In plain words: with the linear scaling rule and gradual warmup, the minibatch can grow to "
               f"{limit['multiplier']}x the baseline's ({limit['fraction']:.2f} % of the data per step) without losing "
               f"accuracy here; the paper reached 32x (0.64 % of ImageNet per step). "
               + ("Larger steps lose accuracy, as in the paper." if beyond else
                  "Where it breaks lies beyond the sizes tried."))
    return out


def format_sweep(doc: dict[str, Any]) -> str:
    """The sweep's table, with the paper's point nearest in fraction of the data per step beside each."""
    c = doc["config"]
    paper = paper_points()
    lines = [f"Error against minibatch size on {data_title(c['data'])}: linear scaling rule from lr {c['base_lr']:g} "
             f"at {c['base_minibatch']}, gradual warmup {c['warmup_epochs']:.3g} epochs, {c['epochs']} epochs, "
             f"decay x0.1 at {list(c['milestones'])}",
             "",
             "| minibatch | x base | % data/step | lr | steps/epoch | seeds | final error % || paper kn (% data/step) | paper error % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in doc["sweep"]:
        near = min(paper, key=lambda q: abs(math.log(q["fraction"] / p["fraction"])))
        lines.append(f"| {p['minibatch']} | {p['multiplier']} | {p['fraction']:.3f} | {p['lr']:.3g} | "
                     f"{p['iters_per_epoch']} | {p['seeds']} | {p['error_mean']:.2f} ± {p['error_std']:.2f} || "
                     f"{near['minibatch']} ({near['fraction']:.3f}) | {near['error_mean']:.2f} |")
    return "\n".join(lines)


def plot_sweep(doc: dict[str, Any], path: str) -> None:
    """Final error against the share of the training set per step (log axis): this run (each seed and
    the mean) and the paper's curve, each as the rise above its own baseline, the limit marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = doc["sweep"]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    base = points[0]["error_mean"]
    xs = [p["fraction"] for p in points]
    for r in doc["runs"]:
        frac = 100.0 * r["minibatch"] / r["train_size"]
        ax.plot(frac, r["final_error"] - base, "o", color="C0", ms=3, alpha=0.4)
    ax.errorbar(xs, [p["error_mean"] - base for p in points], yerr=[p["error_std"] for p in points],
                color="C0", marker="o", lw=2, capsize=3, label=f"this run ({data_title(doc['config']['data'])})")
    pp = paper_points()
    ax.plot([p["fraction"] for p in pp], [p["error_mean"] - PAPER_BASELINE["error"][0] for p in pp],
            color="black", marker="s", ls="--", label="paper (ResNet-50, ImageNet)")
    ax.axvline(paper_limit()["fraction"], color="black", ls=":", lw=0.8)
    ax.axvline(1.0, color="grey", ls="-.", lw=0.8, label="1 % of the data per step")
    ax.axhline(2 * points[0]["error_std"], color="C0", ls=":", lw=0.8, label="2 x baseline seed-std (this run)")
    ax.set_xscale("log")
    ax.set_xlabel("minibatch as % of the training set (one step)")
    ax.set_ylabel("final error minus the baseline's (points)")
    ax.set_title("Figure 1 in miniature: linear scaling rule + gradual warmup")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
