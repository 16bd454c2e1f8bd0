"""Synthetic data sets the tests can learn from in a few steps (tests never read ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def learnable_npz(
    path: Path,
    n_train: int = 96,
    n_test: int = 48,
    size: int = 16,
    classes: int = 3,
    seed: int = 0,
    label_offset: int = 0,
) -> Path:
    """Class k = noise + a bright channel k (k < 3) or a bright row stripe (k >= 3): a tiny CNN learns
    it in a few steps, and crops and flips keep the colour cue."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n) % classes
        x = rng.integers(0, 90, size=(n, size, size, 3)).astype(np.int64)
        for i, k in enumerate(y):
            if k < 3:
                x[i, :, :, k] += 150
            else:
                x[i, (2 * k) % size, :, :] += 160
        arrays[f"x_{split}"] = np.clip(x, 0, 255).astype(np.uint8)
        arrays[f"y_{split}"] = y + label_offset
    np.savez(path, **arrays)
    return path
