"""The demo's presets, its model, its data subset and the conclusions it draws from its numbers
(on documents made up here: no training, no processes)."""
import argparse
import json

import pytest
import torch

from fastallreduce.demo import data, experiment, report
from fastallreduce.demo.model import SmallResNet


def _args(*argv: str) -> argparse.Namespace:
    args = experiment.build_parser().parse_args(["--data", "digits", *argv])
    experiment.apply_preset(args)
    return args


def test_presets_and_explicit_options_win():
    d = _args()
    assert (d.epochs, d.seeds, d.train_size, d.batch_per_worker, d.accum) == (6, 2, 20000, 32, 16)
    f = _args("--full")
    assert (f.epochs, f.seeds, f.train_size) == (12, 3, None)
    q = _args("--quick")
    assert (q.epochs, q.seeds, q.workers, q.base_workers, q.batch_per_worker, q.accum) == (1, 1, 2, 2, 8, 4)
    assert _args("--full", "--epochs", "3", "--seeds", "5").epochs == 3
    assert _args("--full", "--epochs", "3", "--seeds", "5").seeds == 5
    # The default recipe: 2 x 32 x 16 = 1024 = 16x the baseline's 64, and the linear rule gives 3.2.
    assert d.base_lr * d.accum == pytest.approx(3.2)


@pytest.mark.parametrize("side,stride", [(8, 1), (28, 2)])
def test_model_stem(side, stride):
    m = SmallResNet(8, num_classes=10, stem_stride=stride)
    assert m(torch.zeros(3, 1, side, side)).shape == (3, 10)
    assert m.conv1.stride == (stride, stride)


def test_train_size_is_a_fixed_subset():
    a = data.load_data("digits", train_size=100)
    b = data.load_data("digits", train_size=100)
    full = data.load_data("digits")
    assert len(a["ytr"]) == 100 and torch.equal(a["xtr"], b["xtr"]) and torch.equal(a["ytr"], b["ytr"])
    assert len(a["yte"]) == len(full["yte"])  # the test set is never cut
    assert len(data.load_data("digits", train_size=10**6)["ytr"]) == len(full["ytr"])


def _doc(curves: dict[str, list[list[float]]], final: dict[str, list[float]], epochs: int = 9) -> dict:
    """A demo document: per setting, one training-error curve and one final test error per seed."""
    runs = []
    for setting, per_seed in curves.items():
        for seed, (curve, err) in enumerate(zip(per_seed, final[setting])):
            runs.append({"setting": setting, "seed": seed, "minibatch": 64 if setting == "baseline" else 1024,
                         "lr": 0.2 if setting == "baseline" else 3.2, "workers": 2,
                         "accum": 1 if setting == "baseline" else 16, "iters_per_epoch": 10, "test_size": 10000,
                         "final_error": err, "wall_s": 1.0, "comm_s": 0.1, "exposed_s": 0.05,
                         "curve": [{"epoch": i + 1, "train_error": e, "test_error": err, "train_loss": 0.5}
                                   for i, e in enumerate(curve)]})
    doc = {"config": {"epochs": epochs, "milestones": [3, 6, 8], "data": "digits", "batch_per_worker": 32,
                      "warmup_epochs": 1, "seeds": [0, 1], "comm": "fastallreduce", "workers": 2},
           "runs": runs}
    doc["summary"] = report.summarise(doc)
    return doc


def _flat(v: float, epochs: int = 9) -> list[float]:
    return [v] * epochs


def test_paper_ordering_is_recognised():
    # Early (epochs 1-3, before the first decay): no / constant warmup 10 points behind gradual;
    # after it they catch up (later epochs do not count). Final: gradual within one std of baseline.
    behind = [30.0, 25.0, 20.0] + [10.0] * 6
    doc = _doc({"baseline": [_flat(12), _flat(13)], "no warmup": [behind, [b + 1 for b in behind]],
                "constant warmup": [behind, behind], "gradual warmup": [_flat(12), _flat(13)]},
               {"baseline": [10.0, 11.0], "no warmup": [12.0, 12.0], "constant warmup": [13.0, 13.0],
                "gradual warmup": [10.5, 11.2]})
    checks = report.paper_checks(doc)
    assert [c["passed"] for c in checks] == [True, True, True]
    assert report.conclusions(doc)[0] == "the paper's findings: 3 of 3 reproduced in this run"
    s = doc["summary"]
    assert s["no warmup"]["early_train_error_mean"] == pytest.approx((25 + 26) / 2)


def test_a_gap_within_one_std_is_not_a_reproduction():
    # The early gaps are smaller than the seeds' spread, and gradual warmup ends 2 points worse.
    doc = _doc({"baseline": [_flat(12), _flat(12)], "no warmup": [_flat(13), _flat(9)],
                "constant warmup": [_flat(20), _flat(20)], "gradual warmup": [_flat(12), _flat(12)]},
               {"baseline": [10.0, 10.2], "no warmup": [12.0, 12.0], "constant warmup": [13.0, 13.0],
                "gradual warmup": [12.0, 12.2]})
    checks = report.paper_checks(doc)
    assert [c["passed"] for c in checks] == [False, True, False]
    lines = report.conclusions(doc)
    assert lines[0] == "the paper's findings: 1 of 3 reproduced in this run"
    assert lines[1].startswith("NOT reproduced: early: no warmup") and lines[3].startswith("NOT reproduced: final")


def test_report_redraws_a_saved_run(tmp_path, capsys):
    doc = _doc({k: [_flat(12), _flat(13)] for k in report.SETTINGS}, {k: [10.0, 11.0] for k in report.SETTINGS})
    doc.pop("summary")
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(doc))
    out = tmp_path / "out"
    experiment.run(_args("--report", str(saved), "--out", str(out)))
    printed = capsys.readouterr().out
    assert "the paper's findings: 1 of 3 reproduced" in printed  # equal curves: no early gap
    assert (out / "demo.png").stat().st_size > 1000
    assert json.loads((out / "demo.json").read_text())["summary"]["baseline"]["seeds"] == 2
