"""The demo's data sets, as tensors split into training and test sets.

* A directory of IDX files, the format of the MNIST family (MNIST, Fashion-MNIST, KMNIST):
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
  ``t10k-labels-idx1-ubyte``, each plain or gzip-compressed (``.gz``). Debian's
  ``dataset-fashion-mnist`` installs Fashion-MNIST under :data:`FASHION_MNIST_DIR`; it is the
  default when that directory exists.
* ``digits``: scikit-learn's 8x8 handwritten digits (shipped with scikit-learn, no download).
* ``digits-shift``: the same, with the eight one-pixel translations of every training image.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
from typing import Any, Optional

import torch

#: Where Debian's ``dataset-fashion-mnist`` puts the four IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: The data sets that need no files (scikit-learn ships them).
DIGITS = ("digits", "digits-shift")
#: Part of the data set -> the IDX file's name (``.gz`` may follow).
IDX_FILES = {"xtr": "train-images-idx3-ubyte", "ytr": "train-labels-idx1-ubyte",
             "xte": "t10k-images-idx3-ubyte", "yte": "t10k-labels-idx1-ubyte"}
# IDX type codes (the third byte of the magic number) -> numpy dtype; multi-byte values are big-endian.
_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# --quick keeps this many training and test examples: a run of seconds.
_QUICK_TRAIN, _QUICK_TEST = 512, 128


def default_data() -> str:
    """:data:`FASHION_MNIST_DIR` when it exists, else ``digits``."""
    return FASHION_MNIST_DIR if os.path.isdir(FASHION_MNIST_DIR) else "digits"


def data_title(name: str) -> str:
    """A short name of the data set for titles: ``digits``, or the IDX directory's name."""
    return "digits" if name in DIGITS else os.path.basename(os.path.normpath(name))


def idx_paths(directory: str) -> dict[str, str]:
    """The four IDX files of ``directory`` by part (see :data:`IDX_FILES`), plain or ``.gz``.

    Raises:
        FileNotFoundError: a file is missing (the message names every expected file).
    """
    found, missing = {}, []
    for part, stem in IDX_FILES.items():
        path = next((p for p in (os.path.join(directory, stem), os.path.join(directory, stem + ".gz"))
                     if os.path.isfile(p)), None)
        if path is None:
            missing.append(stem)
        else:
            found[part] = path
    if missing:
        raise FileNotFoundError(f"{directory}: no IDX file {', '.join(missing)} (plain or .gz); an IDX data set "
                                f"directory holds {', '.join(IDX_FILES.values())}")
    return found


def check_data(name: str) -> None:
    """Raises ValueError (or FileNotFoundError) unless ``name`` is a data set :func:`load_data` can read."""
    if name in DIGITS:
        return
    if not os.path.isdir(name):
        raise ValueError(f"unknown data set {name!r}: choose digits, digits-shift or a directory of IDX files")
    idx_paths(name)


def train_count(name: str, quick: bool = False, train_size: Optional[int] = None) -> int:
    """How many training examples :func:`load_data` returns, without reading the images (an IDX set's
    label-file header), so that the demo can check its step sizes before starting any process."""
    if name in DIGITS:
        n = len(_digits(name, 0.2, quick)["ytr"])
    else:
        path = idx_paths(name)["ytr"]
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated IDX header")
        n = struct.unpack(">I", head[4:8])[0]
        if quick:
            n = min(n, _QUICK_TRAIN)
    return n if train_size is None else min(n, train_size)


def read_idx(path: str) -> torch.Tensor:
    """One IDX file (gzip-compressed when the name ends in ``.gz``) as a tensor of its shape and type.

    The header is two zero bytes, a type code, the number of dimensions d, then d big-endian
    32-bit sizes; the values follow, big-endian.

    Raises:
        ValueError: the magic number is not an IDX one, or the size disagrees with the header.
    """
    import numpy as np

    with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (magic number 0x{raw[:4].hex() or 'empty'}; expected 0x0000 "
                         "followed by a type byte 08, 09, 0b, 0c, 0d or 0e and the number of dimensions)")
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", raw[4:start])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need = start + math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise ValueError(f"{path}: {len(raw)} bytes, but its header (shape {tuple(shape)}, {dtype.str}) "
                         f"means {need}")
    values = np.frombuffer(raw, dtype=dtype, offset=start).reshape(shape)
    return torch.from_numpy(values.astype(dtype.newbyteorder("="), copy=True))


def load_idx(directory: str) -> dict[str, Any]:
    """An IDX data set: images as (N, 1, H, W) float32 (8-bit values scaled to [0, 1]), labels int64,
    the files' own training / test split, and ``num_classes`` (the largest label + 1).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file is not IDX, or the shapes do not make an image classification set.
    """
    paths = idx_paths(directory)
    t = {part: read_idx(path) for part, path in paths.items()}
    for split in ("tr", "te"):
        x, y = t["x" + split], t["y" + split]
        if x.dim() != 3 or y.dim() != 1 or len(x) != len(y):
            raise ValueError(f"{directory}: images {tuple(x.shape)} and labels {tuple(y.shape)} do not match "
                             f"({paths['x' + split]}, {paths['y' + split]}); expected (N, H, W) and (N,)")
    if t["xtr"].shape[1:] != t["xte"].shape[1:]:
        raise ValueError(f"{directory}: training images are {tuple(t['xtr'].shape[1:])}, "
                         f"test images {tuple(t['xte'].shape[1:])}")
    out: dict[str, Any] = {}
    for part in ("xtr", "xte"):
        x = t[part].unsqueeze(1)
        out[part] = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    for part in ("ytr", "yte"):
        out[part] = t[part].long()
    labels = torch.cat([out["ytr"], out["yte"]])
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"{directory}: negative labels")
    out["num_classes"] = int(labels.max()) + 1 if len(labels) else 0
    return out


def _digits(name: str, test_fraction: float, quick: bool) -> dict[str, Any]:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) float tensors in [0, 1], split stratified (fixed seed).

    ``digits-shift`` adds the eight one-pixel translations of every training image (9x the training
    set, still no download); the test set is unchanged.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, te = train_test_split(range(len(y)), test_size=test_fraction, random_state=0, stratify=d.target)
    xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    if quick:  # CI: a small slice keeps the run to seconds
        xtr, ytr, xte, yte = xtr[:_QUICK_TRAIN], ytr[:_QUICK_TRAIN], xte[:_QUICK_TEST], yte[:_QUICK_TEST]
    if name == "digits-shift":
        shifted = [xtr]
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dx or dy:
                    s = torch.roll(xtr, shifts=(dy, dx), dims=(2, 3))
                    # zero the wrapped-around row/column: a translation, not a rotation
                    if dy == 1:
                        s[:, :, 0, :] = 0
                    elif dy == -1:
                        s[:, :, -1, :] = 0
                    if dx == 1:
                        s[:, :, :, 0] = 0
                    elif dx == -1:
                        s[:, :, :, -1] = 0
                    shifted.append(s)
        xtr, ytr = torch.cat(shifted), ytr.repeat(len(shifted))
    return {"xtr": xtr.contiguous(), "ytr": ytr, "xte": xte.contiguous(), "yte": yte, "num_classes": 10}


def load_data(name: str = "digits", test_fraction: float = 0.2, quick: bool = False,
              train_size: Optional[int] = None) -> dict[str, Any]:
    """The data set ``name``: ``digits``, ``digits-shift`` or a directory of IDX files.

    Returns ``xtr``, ``ytr``, ``xte``, ``yte`` (images (N, 1, H, W) float32 in [0, 1], labels
    int64) and ``num_classes``. ``test_fraction`` splits the digits (IDX files bring their own
    split); ``quick`` keeps the first 512 training and 128 test examples; ``train_size`` keeps
    that many training examples, drawn with a fixed seed (the same subset in every run).
    """
    if name in DIGITS:
        d = _digits(name, test_fraction, quick)
    else:
        check_data(name)
        d = load_idx(name)
        if quick:
            d.update(xtr=d["xtr"][:_QUICK_TRAIN], ytr=d["ytr"][:_QUICK_TRAIN], xte=d["xte"][:_QUICK_TEST],
                     yte=d["yte"][:_QUICK_TEST])
    if train_size is not None and train_size < len(d["ytr"]):
        keep = torch.randperm(len(d["ytr"]), generator=torch.Generator().manual_seed(0))[:train_size]
        d.update(xtr=d["xtr"][keep], ytr=d["ytr"][keep])
    return {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in d.items()}
