"""The demo's IDX reader, on small IDX files written here (the test suite needs no data package)."""
import gzip
import os
import struct

import pytest
import torch

from fastallreduce.demo import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (images, labels) per split: 5 training and 3 test images of 4x3 pixels.
N_TRAIN, N_TEST, H, W = 5, 3, 4, 3


def _idx_bytes(values: list[int], shape: tuple[int, ...], type_code: int = 0x08) -> bytes:
    # Written from the format's definition: 0x0000, type code, dimension count, big-endian sizes.
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + bytes(values)


def _write(path: str, payload: bytes, gz: bool) -> None:
    with (gzip.open(path + ".gz", "wb") if gz else open(path, "wb")) as f:
        f.write(payload)


def _make_set(directory: str, gz: bool, n_train: int = N_TRAIN, n_test: int = N_TEST, h: int = H,
              w: int = W) -> dict[str, list[int]]:
    """Writes the four IDX files; returns the pixel values and labels written."""
    os.makedirs(directory, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        pixels = [(7 * i + (split == "t10k")) % 256 for i in range(n * h * w)]
        labels = [(3 * i + 1) % 10 for i in range(n)]
        _write(os.path.join(directory, f"{split}-images-idx3-ubyte"), _idx_bytes(pixels, (n, h, w)), gz)
        _write(os.path.join(directory, f"{split}-labels-idx1-ubyte"), _idx_bytes(labels, (n,)), gz)
        written[split + "-pixels"], written[split + "-labels"] = pixels, labels
    return written


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_reads_an_idx_set(tmp_path, gz):
    written = _make_set(str(tmp_path), gz)
    d = data.load_data(str(tmp_path))
    assert d["xtr"].shape == (N_TRAIN, 1, H, W) and d["xte"].shape == (N_TEST, 1, H, W)
    assert d["xtr"].dtype == torch.float32 and d["ytr"].dtype == torch.int64
    # Pixels are the bytes written, in row-major order, scaled to [0, 1].
    expect = torch.tensor(written["train-pixels"], dtype=torch.float32).view(N_TRAIN, 1, H, W) / 255
    assert torch.equal(d["xtr"], expect)
    assert d["ytr"].tolist() == written["train-labels"] and d["yte"].tolist() == written["t10k-labels"]
    assert d["num_classes"] == max(written["train-labels"] + written["t10k-labels"]) + 1


def test_quick_keeps_a_slice(tmp_path):
    _make_set(str(tmp_path), gz=True)
    d = data.load_data(str(tmp_path), quick=True)
    assert len(d["ytr"]) == N_TRAIN and len(d["yte"]) == N_TEST  # smaller than the slice: all of it


def test_read_idx_shapes_and_types(tmp_path):
    path = str(tmp_path / "x-idx2-int")
    # Type 0x0C: big-endian int32; 2x2 values, one negative.
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 2) + struct.pack(">4i", 1, -2, 300, 70000))
    t = data.read_idx(path)
    assert t.dtype == torch.int32 and t.tolist() == [[1, -2], [300, 70000]]


def test_wrong_magic_is_a_clear_error(tmp_path):
    _make_set(str(tmp_path), gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x1f\x8b" + path.read_bytes()[2:])  # e.g. a gzip file without the .gz name
    with pytest.raises(ValueError, match="not an IDX file.*magic number 0x1f8b0801"):
        data.read_idx(str(path))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: not an IDX file"):
        data.load_data(str(tmp_path))


def test_size_must_match_header(tmp_path):
    path = tmp_path / "t"
    path.write_bytes(_idx_bytes([1, 2, 3], (4,)))
    with pytest.raises(ValueError, match=r"11 bytes, but its header \(shape \(4,\), \|u1\) means 12"):
        data.read_idx(str(path))


def test_missing_files_and_unknown_names(tmp_path):
    _make_set(str(tmp_path), gz=False)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.check_data(str(tmp_path))
    with pytest.raises(ValueError, match="digits, digits-shift or a directory of IDX files"):
        data.check_data(str(tmp_path / "nowhere"))
    data.check_data("digits")
    assert data.data_title("digits-shift") == "digits" and data.data_title(str(tmp_path) + "/") == tmp_path.name


def test_images_and_labels_must_agree(tmp_path):
    _make_set(str(tmp_path), gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes([1, 2], (2,)))
    with pytest.raises(ValueError, match="do not match"):
        data.load_data(str(tmp_path))


def test_demo_trains_on_an_idx_set(tmp_path):
    # 28x28 images through the workers (the model, the class count), one baseline run of one epoch.
    import json
    import subprocess
    import sys

    _make_set(str(tmp_path / "idx"), gz=True, n_train=64, n_test=16, h=28, w=28)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    p = subprocess.run([sys.executable, "-m", "fastallreduce", "demo", "--quick", "--data", str(tmp_path / "idx"),
                        "--settings", "baseline", "--no-plot", "--no-progress", "--out", str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Large-minibatch SGD on idx (" in p.stdout
    (run,) = json.loads((tmp_path / "demo.json").read_text())["runs"]
    assert run["train_size"] == 64 and run["test_size"] == 16 and run["iters_per_epoch"] == 4


def test_demo_rejects_bad_data_before_starting_workers(tmp_path):
    from fastallreduce import demo

    with pytest.raises(SystemExit, match="--data: unknown data set"):
        demo.main(["--data", str(tmp_path / "nowhere"), "--quick", "--no-progress", "--out", str(tmp_path)])


# --- scripts/demo.sh: installs the package when it can, else says it runs on digits --------------


def _run_demo_sh(tmp_path, uid: int, apt_ok: bool, *args: str) -> tuple[str, str]:
    """Runs a copy of scripts/demo.sh with the set-up stubbed out and stand-ins for id, apt-get and
    python on PATH; returns its output and the apt-get calls."""
    import shutil
    import subprocess

    if os.path.isdir(data.FASHION_MNIST_DIR):
        pytest.skip(f"{data.FASHION_MNIST_DIR} exists here: the script never needs to install it")
    scripts, bin_ = tmp_path / "scripts", tmp_path / "bin"
    scripts.mkdir()
    bin_.mkdir()
    shutil.copy(os.path.join(ROOT, "scripts", "demo.sh"), scripts / "demo.sh")
    (scripts / "env.sh").write_text("set -euo pipefail\n")  # the real one builds the venv
    log = tmp_path / "apt.log"
    stubs = {"id": f"echo {uid}",
             "apt-get": f'echo "$*" >> {log}; exit {0 if apt_ok else 100}',
             "python": 'echo "python $*"'}
    for name, body in stubs.items():
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_}{os.pathsep}{os.environ['PATH']}")
    p = subprocess.run(["bash", str(scripts / "demo.sh"), *args], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr, log.read_text() if log.exists() else ""


def test_demo_sh_without_root_says_how_and_runs_on_digits(tmp_path):
    out, apt = _run_demo_sh(tmp_path, 1000, True, "--quick")
    assert apt == ""
    (line,) = [l for l in out.splitlines() if "not found" in l]
    assert "apt-get install dataset-fashion-mnist" in line and "running on scikit-learn's digits" in line
    assert out.splitlines()[-1] == "python -m fastallreduce demo --quick"


def test_demo_sh_as_root_tries_apt_once(tmp_path):
    out, apt = _run_demo_sh(tmp_path, 0, False)
    assert apt.splitlines() == ["update -qq"]  # install is not reached when update fails
    assert "could not install dataset-fashion-mnist" in out and "running on scikit-learn's digits" in out
    (tmp_path / "ok").mkdir()
    _, apt = _run_demo_sh(tmp_path / "ok", 0, True)
    assert apt.splitlines() == ["update -qq", "install -y -qq dataset-fashion-mnist"]


def test_demo_sh_with_data_skips_the_package(tmp_path):
    out, apt = _run_demo_sh(tmp_path, 0, True, "--data", "digits")
    assert apt == "" and "not found" not in out
    assert out.splitlines()[-1] == "python -m fastallreduce demo --data digits"
