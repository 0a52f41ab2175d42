"""The demo's report: the paper's Table 1, the per-setting summary, the conclusions drawn from the
numbers, the Markdown table and the plot."""
from __future__ import annotations

import math
import statistics
from typing import Any, Optional

from .data import data_title

# The paper's Table 1 (ResNet-50 on ImageNet, top-1 validation error %, mean ± std of 5 runs).
PAPER = {
    "baseline": {"minibatch": 256, "lr": 0.1, "error": (23.60, 0.12)},
    "no warmup": {"minibatch": 8192, "lr": 3.2, "error": (24.84, 0.37)},
    "constant warmup": {"minibatch": 8192, "lr": 3.2, "error": (25.88, 0.56)},
    "gradual warmup": {"minibatch": 8192, "lr": 3.2, "error": (23.74, 0.09)},
}
SETTINGS = ("baseline", "no warmup", "constant warmup", "gradual warmup")


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


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
        f"Large-minibatch SGD on {data_title(c['data'])} ({c['data']}), {c['epochs']} epochs, n = {c['batch_per_worker']} per worker, "
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
    fig.suptitle(f"Large-minibatch SGD in miniature: {data_title(c['data'])}, {c['workers']} workers, n={c['batch_per_worker']}, "
                 f"{c['epochs']} epochs, warmup {c['warmup_epochs']} epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
