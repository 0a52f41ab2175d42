"""The demo's data: scikit-learn's 8x8 digits, as tensors split into training and test sets."""
from __future__ import annotations

import torch


def load_data(name: str = "digits", test_fraction: float = 0.2, quick: bool = False) -> dict[str, torch.Tensor]:
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
        xtr, ytr, xte, yte = xtr[:512], ytr[:512], xte[:128], yte[:128]
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
    elif name != "digits":
        raise ValueError(f"unknown data set {name!r}; choose digits or digits-shift")
    return {"xtr": xtr.contiguous(), "ytr": ytr, "xte": xte.contiguous(), "yte": yte}
