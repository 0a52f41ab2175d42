"""The demo's Figure 1 in miniature: its bookkeeping (which runs, which minibatch and lr, the summary,
the limit, the 1 % cap) on made-up documents, and one tiny real sweep (two points, one epoch)."""
import argparse
import json
import os
import subprocess
import sys

import pytest

from fastallreduce.demo import experiment, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args(*argv: str) -> argparse.Namespace:
    args = experiment.build_parser().parse_args(["--data", "digits", *argv])
    experiment.apply_preset(args)
    return args


def test_the_papers_curve_breaks_after_8k():
    limit = sweep.paper_limit()
    assert limit["minibatch"] == 8192
    assert limit["fraction"] == pytest.approx(0.64, abs=0.005)
    # A tighter baseline moves the limit down: within 2 x 0.02 of 23.60 only up to 4k (23.56).
    assert sweep.sweep_limit(sweep.paper_points(), 23.60, 0.02)["minibatch"] == 4096
    assert sweep.sweep_limit(sweep.paper_points(), 20.0, 0.1) is None


def test_the_limit_is_the_last_point_of_an_unbroken_run():
    pts = [{"minibatch": mb, "error_mean": e} for mb, e in ((32, 10.0), (64, 10.1), (128, 11.0), (256, 10.0))]
    # 128 is out (11.0 > 10.0 + 2 x 0.2); 256 comes back within but the run is already broken.
    assert sweep.sweep_limit(pts, 10.0, 0.2)["minibatch"] == 64
    assert sweep.sweep_limit(pts, 10.0, 0.6)["minibatch"] == 256


def test_sweep_jobs_minibatch_and_accumulation():
    a = _args("--sweep", "--seeds", "2", "--multipliers", "1,4,2")
    jobs = experiment._jobs(a, ["baseline", "gradual warmup"], [0, 1], base_workers=2)
    assert [(j["seed"], j["multiplier"], j["setting"], j["workers"], j["accum"]) for j in jobs] == [
        (0, 1, "baseline", 2, 1), (0, 2, "gradual warmup", 2, 2), (0, 4, "gradual warmup", 2, 4),
        (1, 1, "baseline", 2, 1), (1, 2, "gradual warmup", 2, 2), (1, 4, "gradual warmup", 2, 4)]
    # A baseline on 1 worker, the large minibatches on 2: x2 is one micro-batch on each.
    b = _args("--sweep", "--workers", "2", "--base-workers", "1", "--multipliers", "1,2,8")
    assert [j["accum"] for j in experiment._jobs(b, [], [0], base_workers=1)] == [1, 1, 4]
    for bad in ("2,4", "1,x", "1,3"):  # no baseline; not integers; x3 of 2 x n is not whole on 2 workers
        with pytest.raises(SystemExit):
            _args("--sweep", "--base-workers", "1", "--multipliers", bad)


def test_table_jobs_keep_seeds_outermost():
    a = _args("--full", "--seeds", "2")
    jobs = experiment._jobs(a, list(a.settings.split(",")), [5, 6], base_workers=2)
    assert [(j["seed"], j["setting"], j["accum"], j["multiplier"]) for j in jobs[:4]] == [
        (5, "baseline", 1, 1), (5, "no warmup", 16, 16), (5, "constant warmup", 16, 16), (5, "gradual warmup", 16, 16)]
    assert len(jobs) == 8 and jobs[4]["seed"] == 6


def test_a_step_over_the_cap_is_refused_before_any_process(tmp_path):
    # digits: 1,437 training images; the default's 512-example step would be 36 % of them.
    with pytest.raises(SystemExit, match=r"covers 35\.63 % of the 1437 training examples"):
        experiment.run(_args("--out", str(tmp_path)))
    assert not os.listdir(tmp_path)
    # A step of 2 x 4 = 8 images (0.56 %) passes; the sweep is exempt by design.
    experiment.check_step_fraction(_args("--batch-per-worker", "4", "--accum", "1"), 8, ["baseline", "no warmup"])
    experiment.check_step_fraction(_args("--sweep"), 32, ["baseline", "gradual warmup"])


def _sweep_doc() -> dict:
    runs = []
    for seed, errs in enumerate(((10.0, 10.1, 10.3, 12.0), (10.2, 10.2, 10.2, 13.0))):
        for m, err in zip((1, 2, 4, 8), errs):
            runs.append({"setting": "baseline" if m == 1 else "gradual warmup", "seed": seed, "multiplier": m,
                         "minibatch": 32 * m, "lr": 0.05 * m, "iters_per_epoch": 60000 // (32 * m),
                         "train_size": 60000, "final_error": err, "curve": [{"train_loss": 0.3}]})
    return {"config": {"mode": "sweep", "data": "digits", "base_lr": 0.05, "base_minibatch": 32,
                       "warmup_epochs": 1.0, "epochs": 18, "milestones": [6, 12, 16]}, "runs": runs}


def test_sweep_summary_and_conclusions():
    doc = _sweep_doc()
    doc["sweep"] = sweep.summarise_sweep(doc)
    p = doc["sweep"]
    assert [x["minibatch"] for x in p] == [32, 64, 128, 256]
    assert [x["seeds"] for x in p] == [2, 2, 2, 2]
    assert p[0]["error_mean"] == pytest.approx(10.1) and p[0]["error_std"] == pytest.approx(0.1414, abs=1e-4)
    assert p[2]["fraction"] == pytest.approx(100 * 128 / 60000)
    lines = sweep.sweep_conclusions(doc)
    # Baseline 10.10 ± 0.14: the bar is 10.38; x4 (10.25) is within, x8 (12.5) is not.
    assert "<= 10.38 %)" in lines[0]
    assert ": 128 (4x, 0.21 % of the training set per step, 10.25 %)" in lines[0]
    assert "beyond it, 256 (0.43 % per step) ends at 12.50 %" in lines[0]
    assert "the paper: 8192 (0.64 % of ImageNet per step)" in lines[0]
    assert lines[1].startswith("In plain words: with the linear scaling rule and gradual warmup, the minibatch can "
                               "grow to 4x")
    table = sweep.format_sweep(doc)
    assert "| 256 | 8 | 0.427 | 0.4 | 234 | 2 | 12.50 ± 0.71 ||" in table


def test_report_of_a_saved_sweep(tmp_path, capsys):
    saved = tmp_path / "sweep.json"
    saved.write_text(json.dumps(_sweep_doc()))
    experiment.run(_args("--report", str(saved), "--out", str(tmp_path / "out")))
    assert "the largest minibatch whose final test error stays within" in capsys.readouterr().out
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 1000


@pytest.mark.timeout(300)
def test_a_tiny_sweep_trains_and_saves_as_it_goes(tmp_path):
    # Two points (x1, x2), one epoch of digits' 512-example slice, 2 workers: the real driver end to end.
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, "-m", "fastallreduce", "demo", "--sweep", "--quick", "--data", "digits",
                        "--seeds", "2", "--no-progress", "--no-plot", "--out", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=280)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert not (tmp_path / "sweep.partial.json").exists()  # replaced by sweep.json
    assert [(r["seed"], r["multiplier"], r["minibatch"]) for r in doc["runs"]] == [(0, 1, 16), (0, 2, 32),
                                                                                     (1, 1, 16), (1, 2, 32)]
    assert [r["lr"] for r in doc["runs"][:2]] == pytest.approx([0.1, 0.2])  # the linear rule
    assert [x["minibatch"] for x in doc["sweep"]] == [16, 32] and doc["sweep"][0]["seeds"] == 2
