"""CIFAR-10 images upsampled to 224x224, for the ImageNet-sized ResNet-18 rows of bench/search.py.

`--data bench.data224:cifar10_224` (a `module:function` data source): the balanced small subset,
resized on the fly by bilinear interpolation, so a 224-input model gets calibration images that
look like images (a layerwise search's sensitivity needs them) without a 224-pixel dataset on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SMALL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "cifar10_small.npz"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class Upsampled:
    """Batches of (images at `size`, labels) from uint8 NHWC arrays, normalized like CIFAR-10."""

    def __init__(self, x: np.ndarray, y: np.ndarray, size: int = 224, batch: int = 32) -> None:
        self.x, self.y, self.size, self.batch = x, y, size, batch

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        for i in range(0, len(self.y), self.batch):
            x = torch.from_numpy(self.x[i : i + self.batch]).permute(0, 3, 1, 2).float() / 255.0
            x = F.interpolate((x - mean) / std, size=self.size, mode="bilinear", align_corners=False)
            yield x, torch.from_numpy(self.y[i : i + self.batch]).long()


def cifar10_224() -> tuple[Upsampled, Upsampled]:
    d = np.load(SMALL)
    return Upsampled(d["x_train"], d["y_train"]), Upsampled(d["x_test"], d["y_test"])
