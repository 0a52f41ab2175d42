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
    assert (d.epochs, d.seeds, d.train_size, d.batch_per_worker, d.accum) == (3, 2, None, 16, 16)
    assert d.settings == "baseline,gradual warmup" and d.multipliers == [1]
    f = _args("--full")
    assert (f.epochs, f.seeds, f.train_size) == (12, 3, None) and f.settings.split(",") == list(report.SETTINGS)
    s = _args("--sweep")
    assert s.multipliers == [1, 2, 4, 8, 16, 32, 64] and (s.epochs, s.seeds) == (12, 2)
    q = _args("--quick")
    assert (q.epochs, q.seeds, q.workers, q.base_workers, q.batch_per_worker, q.accum) == (3, 1, 2, 2, 8, 4)
    assert _args("--full", "--epochs", "3", "--seeds", "5").epochs == 3
    assert _args("--full", "--epochs", "3", "--seeds", "5").seeds == 5
    # The default recipe: 2 x 16 x 16 = 512 = 16x the baseline's 32; 512 of Fashion-MNIST's 60,000 is
    # 0.85 % per step (at most 1 %, the paper's 8k: 0.64 %); warmup 5/90 of the epochs; decays at 30/60/80 of 90.
    assert d.workers * d.batch_per_worker * d.accum == 512
    assert experiment.warmup_epochs_for(f.epochs) == pytest.approx(12 * 5 / 90)
    assert experiment.milestones_for(f.epochs) == (4, 8, 11) and experiment.milestones_for(d.epochs) == (1, 2)
    with pytest.raises(SystemExit):
        _args("--full", "--sweep")


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
                         "train_size": 60000,
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
    # Final test errors as in the paper's Table 1: gradual within twice the larger std of the
    # baseline, no / constant warmup behind gradual by more than twice the larger std.
    behind = [30.0, 25.0, 20.0] + [10.0] * 6
    doc = _doc({"baseline": [_flat(12), _flat(13)], "no warmup": [behind, [b + 1 for b in behind]],
                "constant warmup": [behind, behind], "gradual warmup": [_flat(12), _flat(13)]},
               {"baseline": [10.0, 11.0], "no warmup": [13.0, 13.5], "constant warmup": [14.0, 14.0],
                "gradual warmup": [10.5, 11.2]})
    checks = report.paper_checks(doc)
    assert [c["passed"] for c in checks] == [True, True, True]
    assert report.conclusions(doc)[0] == "the paper's findings: 3 of 3 checked reproduced in this run"
    s = doc["summary"]
    # The early gap (epochs 1-3, before the first decay) is reported, not judged.
    assert s["no warmup"]["early_train_error_mean"] == pytest.approx((25 + 26) / 2)
    assert any(line.startswith("early (training error, epochs 1-3): no warmup 25.50") for line in report.conclusions(doc))


def test_the_papers_own_table_passes_the_bar():
    # Table 1's numbers (mean ± std of 5 runs) as five-seed documents with those means and stds.
    def seeds(mean: float, std: float) -> list[float]:
        a = std * 2 ** 0.5  # five values with this sample std
        return [mean - a, mean, mean, mean, mean + a]

    final = {name: seeds(*report.PAPER[name]["error"]) for name in report.SETTINGS}
    doc = _doc({name: [_flat(10)] * 5 for name in report.SETTINGS}, final)
    checks = report.paper_checks(doc)
    assert [c["passed"] for c in checks] == [True, True, True]
    assert checks[0]["gap"] == pytest.approx(0.14) and checks[0]["bar"] == pytest.approx(0.24)
    # The no-warmup finding: 24.84 - 23.74 = 1.10 against 2 x 0.37 = 0.74.
    assert checks[1]["gap"] == pytest.approx(1.10) and checks[1]["bar"] == pytest.approx(0.74)


@pytest.mark.parametrize("gradual,passed", [([10.0, 10.0 + 2 * 0.2], True), ([10.7, 10.7], False)])
def test_the_final_bar_is_twice_the_larger_std(gradual, passed):
    # Baseline 10.0 / 10.2 (std 0.141); gradual 10.0 / 10.4 (std 0.283, mean 0.1 above: within 0.57);
    # gradual 10.7 / 10.7 (std 0, 0.6 above the baseline's 10.1: outside 2 x 0.141 = 0.28).
    doc = _doc({"baseline": [_flat(12)] * 2, "gradual warmup": [_flat(12)] * 2},
               {"baseline": [10.0, 10.2], "gradual warmup": gradual})
    (check,) = report.paper_checks(doc)
    assert check["passed"] is passed and check["name"] == "final: gradual warmup matches the baseline"


def test_a_gap_within_twice_the_std_is_not_a_reproduction():
    # No warmup is behind by 1.0 but its seeds spread by 0.71 (bar 1.41); gradual warmup ends 2 points worse.
    doc = _doc({"baseline": [_flat(12), _flat(12)], "no warmup": [_flat(13), _flat(9)],
                "constant warmup": [_flat(20), _flat(20)], "gradual warmup": [_flat(12), _flat(12)]},
               {"baseline": [10.0, 10.2], "no warmup": [12.6, 13.6], "constant warmup": [15.0, 15.0],
                "gradual warmup": [12.0, 12.2]})
    checks = report.paper_checks(doc)
    assert [c["passed"] for c in checks] == [False, False, True]
    lines = report.conclusions(doc)
    assert lines[0] == "the paper's findings: 1 of 3 checked reproduced in this run"
    assert lines[1].startswith("NOT reproduced: final: gradual warmup matches")
    assert lines[2].startswith("NOT reproduced: final: no warmup behind")
    words = report.plain_words(doc)
    assert "Not reproduced: gradual warmup matches the baseline; no warmup behind gradual warmup." in words
    assert "Reproduced: constant warmup behind gradual warmup." in words
    assert "+2.00 points (paper: +0.14)" in words


def test_one_seed_is_not_judged_and_the_default_names_what_it_skips():
    doc = _doc({"baseline": [_flat(12)], "gradual warmup": [_flat(12)]},
               {"baseline": [10.0], "gradual warmup": [10.1]})
    (check,) = report.paper_checks(doc)
    assert check["passed"] is None and "not judged" in check["text"]
    words = report.plain_words(doc)
    assert "Not judged (one seed): gradual warmup matches the baseline." in words
    assert "Not run here: no warmup, constant warmup" in words and "--full" in words and "--sweep" in words


def test_report_redraws_a_saved_run(tmp_path, capsys):
    doc = _doc({k: [_flat(12), _flat(13)] for k in report.SETTINGS}, {k: [10.0, 11.0] for k in report.SETTINGS})
    doc.pop("summary")
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(doc))
    out = tmp_path / "out"
    experiment.run(_args("--report", str(saved), "--out", str(out)))
    printed = capsys.readouterr().out
    assert "the paper's findings: 1 of 3 checked reproduced" in printed  # equal errors: no warmup gap
    assert "In plain words:" in printed
    assert (out / "demo.png").stat().st_size > 1000
    assert json.loads((out / "demo.json").read_text())["summary"]["baseline"]["seeds"] == 2
