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


def early_epochs(doc: dict[str, Any]) -> int:
    """How many epochs count as "early": those before the first lr decay (the paper's Figure 2 shows
    the large minibatch without gradual warmup behind over that stretch), at least one."""
    c = doc["config"]
    return min(c["milestones"]) if c["milestones"] else c["epochs"]


def summarise(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per setting: mean ± std over seeds of the final test error, the early training error (mean over
    :func:`early_epochs`), the final training loss, wall time and exposed communication."""
    out: dict[str, dict[str, Any]] = {}
    early = early_epochs(doc)
    for setting in SETTINGS:
        runs = [r for r in doc["runs"] if r["setting"] == setting]
        if not runs:
            continue
        err = _mean_std([r["final_error"] for r in runs])
        loss = _mean_std([r["curve"][-1]["train_loss"] for r in runs])
        early_err = _mean_std([statistics.fmean(e.get("train_error", math.nan) for e in r["curve"][:early])
                               for r in runs])
        out[setting] = {
            "seeds": len(runs), "minibatch": runs[0]["minibatch"], "lr": runs[0]["lr"],
            "workers": runs[0]["workers"], "accum": runs[0]["accum"],
            "error_mean": err[0], "error_std": err[1], "final_loss_mean": loss[0], "final_loss_std": loss[1],
            "early_train_error_mean": early_err[0], "early_train_error_std": early_err[1],
            "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
            "cpu_s_mean": statistics.fmean(r.get("cpu_s", math.nan) for r in runs),
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


def _bar(*stds: float) -> float:
    """The verdicts' bar: twice the larger seed-std of the settings compared. The paper's own
    Table 1 passes it: gradual warmup 23.74 ± 0.09 against the baseline's 23.60 ± 0.12 is 0.14
    apart, under 2 x 0.12."""
    return 2.0 * max(stds)


def finding_pairs(settings: list[str]) -> list[tuple[str, str]]:
    """The Table-1 findings that runs of ``settings`` can judge: (the setting compared with gradual
    warmup, the finding's name)."""
    if "gradual warmup" not in settings:
        return []
    pairs = [("baseline", "final: gradual warmup matches the baseline")] if "baseline" in settings else []
    return pairs + [(n, f"final: {n} behind gradual warmup") for n in ("no warmup", "constant warmup")
                    if n in settings]


def paper_checks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's three Table-1 findings, each judged on this run's final test errors (as Table 1 is),
    for every finding whose settings the run has:

    * gradual warmup's mean is within :func:`_bar` (twice the larger seed-std) of the baseline's;
    * no warmup's mean is behind gradual warmup's by more than the bar;
    * constant warmup's mean is behind gradual warmup's by more than the bar.

    Each entry has ``name``, ``passed`` (None when a setting has fewer than 2 seeds: no spread to
    judge by) and ``text``.
    """
    s = doc["summary"]
    g = s.get("gradual warmup")
    out = []
    for other, title in finding_pairs(list(s)):
        v = s[other]
        gap = (g if other == "baseline" else v)["error_mean"] - (v if other == "baseline" else g)["error_mean"]
        bar = _bar(g["error_std"], v["error_std"])
        judged = min(g["seeds"], v["seeds"]) >= 2
        passed = (abs(gap) <= bar if other == "baseline" else gap > bar) if judged else None
        paper_gap = (PAPER["gradual warmup"]["error"][0] - PAPER["baseline"]["error"][0] if other == "baseline"
                     else PAPER[other]["error"][0] - PAPER["gradual warmup"]["error"][0])
        first, second = ("gradual warmup", other) if other == "baseline" else (other, "gradual warmup")
        out.append({"name": title, "passed": passed, "gap": gap, "bar": bar,
                    "text": f"final test error {first} {s[first]['error_mean']:.2f} % vs {second} "
                            f"{s[second]['error_mean']:.2f} %: gap {gap:+.2f} against twice the larger seed-std "
                            f"{bar:.2f} (paper: {paper_gap:+.2f})" + ("" if judged else "; one seed: not judged")})
    return out


def early_gaps(doc: dict[str, Any]) -> list[str]:
    """The early gap the paper's Figure 2 shows: training error over the epochs before the first decay,
    no / constant warmup against gradual warmup (informative; the verdicts use final test error)."""
    s, out = doc["summary"], []
    if "gradual warmup" not in s:
        return out
    g = s["gradual warmup"]
    for name in ("baseline", "no warmup", "constant warmup"):
        if name in s:
            v = s[name]
            out.append(f"early (training error, epochs 1-{early_epochs(doc)}): {name} "
                       f"{v['early_train_error_mean']:.2f} ± {v['early_train_error_std']:.2f} % vs gradual warmup "
                       f"{g['early_train_error_mean']:.2f} ± {g['early_train_error_std']:.2f} %")
    return out


def conclusions(doc: dict[str, Any]) -> list[str]:
    """What this run shows, in words, decided from its numbers: first the paper's findings
    (:func:`paper_checks`), the early gaps, then the finer comparisons (2 standard errors = 'clearly')."""
    s = doc["summary"]
    checks = paper_checks(doc)
    verdict = {True: "REPRODUCED", False: "NOT reproduced", None: "not judged"}
    out = [f"{verdict[c['passed']]}: {c['name']} ({c['text']})" for c in checks]
    judged = [c for c in checks if c["passed"] is not None]
    if judged:
        n = sum(c["passed"] for c in judged)
        out.insert(0, f"the paper's findings: {n} of {len(judged)} checked reproduced in this run")
    out += early_gaps(doc)
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
                       f"wall {l['wall_s_mean']:.1f} s vs {b['wall_s_mean']:.1f} s per run (CPU {l['cpu_s_mean']:.1f} s vs "
                       f"{b['cpu_s_mean']:.1f} s: the wall time of an idle machine), exposed communication "
                       f"{l['exposed_s_mean']:.2f} s vs {b['exposed_s_mean']:.2f} s")
    return out


def step_fraction(doc: dict[str, Any], minibatch: int) -> float:
    """The share of the training set one step of ``minibatch`` covers, in % (the paper's 8k: 0.64 %)."""
    n = next((r["train_size"] for r in doc["runs"] if r.get("train_size")), 0)
    return 100.0 * minibatch / n if n else float("nan")


def _seeds(a: int, b: int) -> str:
    return f"{a} seeds each" if a == b else f"{a} and {b} seeds"


def plain_words(doc: dict[str, Any]) -> str:
    """The demo's last paragraph: what was reproduced, what was not, and the one number that matters
    (gradual warmup's final error minus the baseline's, beside the paper's +0.14)."""
    s, checks = doc["summary"], paper_checks(doc)
    if "baseline" not in s or "gradual warmup" not in s:
        return "This run lacks the baseline or gradual warmup, so it says nothing about the paper's main claim."
    b, g = s["baseline"], s["gradual warmup"]
    ratio = g["minibatch"] / b["minibatch"]
    head = (f"In plain words: a minibatch {ratio:g}x the baseline's ({g['minibatch']} examples, one step = "
            f"{step_fraction(doc, g['minibatch']):.2f} % of the training set; the paper's 8k: 0.64 %), trained with the "
            f"linearly scaled lr {g['lr']:.3g} and gradual warmup, ended at {g['error_mean']:.2f} % test error against "
            f"the baseline's {b['error_mean']:.2f} % ({_seeds(b['seeds'], g['seeds'])}). "
            f"The number that matters: {g['error_mean'] - b['error_mean']:+.2f} points (paper: +0.14).")
    done = [c["name"].split(": ", 1)[1] for c in checks if c["passed"]]
    failed = [c["name"].split(": ", 1)[1] for c in checks if c["passed"] is False]
    unjudged = [c["name"].split(": ", 1)[1] for c in checks if c["passed"] is None]
    parts = [head]
    if done:
        parts.append("Reproduced: " + "; ".join(done) + ".")
    if failed:
        parts.append("Not reproduced: " + "; ".join(failed) + ".")
    if unjudged:
        parts.append("Not judged (one seed): " + "; ".join(unjudged) + ".")
    missing = [n for n in SETTINGS if n not in s]
    if missing:
        parts.append(f"Not run here: {', '.join(missing)}; `bash scripts/demo.sh --full` runs all four settings "
                     "(Table 1) and `bash scripts/demo.sh --sweep` the error against minibatch size (Figure 1).")
    return " ".join(parts)


def format_table(doc: dict[str, Any]) -> str:
    """The results table, with the paper's Table 1 beside it."""
    c = doc["config"]
    lines = [
        f"Large-minibatch SGD on {data_title(c['data'])} ({c['data']}), {c['epochs']} epochs, n = {c['batch_per_worker']} per worker, "
        f"warmup {c['warmup_epochs']:.3g} epochs, decay x0.1 at epochs {list(c['milestones'])}, {len(c['seeds'])} seed(s), "
        f"gradients averaged by {'the fastallreduce DDP hook' if c.get('comm') == 'fastallreduce' else 'DDP (gloo)'}",
        "",
        f"| {'setting':<16}| {'k x n x accum':>14} | {'minibatch':>9} | {'lr':>6} | {'early train err %':>17} | "
        f"{'final error %':>15} | {'wall s':>7} | {'exposed comm s':>14} || paper kn | paper lr | paper error % |",
        "|" + "-" * 17 + "|" + "-" * 16 + "|" + "-" * 11 + "|" + "-" * 8 + "|" + "-" * 19 + "|" + "-" * 17 + "|"
        + "-" * 9 + "|" + "-" * 16 + "||" + "-" * 10 + "|" + "-" * 10 + "|" + "-" * 15 + "|",
    ]
    for name, v in doc["summary"].items():
        p = PAPER[name]
        shape = f"{v['workers']}x{c['batch_per_worker']}x{v['accum']}"
        err = f"{v['error_mean']:.2f} ± {v['error_std']:.2f}"
        exposed = f"{v['exposed_s_mean']:.2f} ({100 * v['exposed_s_mean'] / max(v['wall_s_mean'], 1e-9):.1f}%)"
        if c.get("comm") != "fastallreduce":
            exposed = "n/a"
        early = f"{v['early_train_error_mean']:.2f} ± {v['early_train_error_std']:.2f}"
        lines.append(f"| {name:<16}| {shape:>14} | {v['minibatch']:>9} | {v['lr']:>6.3g} | {early:>17} | {err:>15} | "
                     f"{v['wall_s_mean']:>7.1f} | {exposed:>14} || {p['minibatch']:>8} | {p['lr']:>8} | "
                     f"{p['error'][0]:.2f} ± {p['error'][1]:.2f} |")
    lines.append("")
    lines.append(f"early train err: training error (on the minibatches as trained) averaged over epochs "
                 f"1-{early_epochs(doc)}, before the first lr decay; "
                 "final error: test error after the last epoch, mean ± std over seeds; wall s: training time per run "
                 "(slowest worker, evaluation excluded); exposed comm: time the last gradient bucket was still "
                 "being reduced after backward ended, summed over steps (share of wall time)")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: str) -> None:
    """Training error (the paper's Figure 2) and test error against epoch, for every run (thin) and
    each setting's mean (thick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_err) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = {"baseline": "black", "no warmup": "C3", "constant warmup": "C1", "gradual warmup": "C0"}
    for setting in SETTINGS:
        runs = [r for r in doc["runs"] if r["setting"] == setting]
        if not runs:
            continue
        col = colors[setting]
        epochs = [e["epoch"] for e in runs[0]["curve"]]
        v = doc["summary"][setting]
        label = f"{setting} (kn={v['minibatch']}, lr={v['lr']:.3g})"
        for ax, key in ((ax_train, "train_error"), (ax_err, "test_error")):
            for r in runs:
                ax.plot(epochs, [e.get(key, math.nan) for e in r["curve"]], color=col, lw=0.6, alpha=0.35)
            mean = [statistics.fmean(r["curve"][i].get(key, math.nan) for r in runs) for i in range(len(epochs))]
            ax.plot(epochs, mean, color=col, lw=2, label=label, marker="o", ms=3)
    c = doc["config"]
    for ax in (ax_train, ax_err):
        ax.axvline(c["warmup_epochs"] + 0.5, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_yscale("log")
    ax_train.set_ylabel("training error %")
    ax_err.set_ylabel("test error %")
    ax_train.set_title("training error, as the paper's Figure 2 (thin: each seed; thick: mean)")
    ax_err.set_title("test error")
    fig.suptitle(f"Large-minibatch SGD in miniature: {data_title(c['data'])}, {c['workers']} workers, n={c['batch_per_worker']}, "
                 f"{c['epochs']} epochs, warmup {c['warmup_epochs']:.3g} epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
