"""ThiNet (Luo, Wu & Lin, "ThiNet: A Filter Level Pruning Method for Deep Neural Network
Compression", ICCV 2017).

Channels of layer i are judged by layer i+1: on sampled outputs of the next layer (calibration
images, random output channels and locations), the greedy subset selection removes, one at a time,
the channel whose removal — together with those already removed — changes those outputs least
(min sum_samples (sum_{c in T} x_c)^2). The removal order is the ranking, so a plan at any width
keeps a prefix-consistent set. After pruning, the remaining channels are rescaled by least squares
so they reconstruct the original outputs (the paper's final step). Groups without a consuming
Conv2d/Linear (rare) fall back to L1 filter norms, and the plan says so.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edgeprune.pipeline.prune.methods import reconstruction as rec
from edgeprune.pipeline.prune.methods.base import Importance, Scores, register
from edgeprune.pipeline.prune.methods.l1 import L1Importance
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.space import PruningSpace


def greedy_removal_order(contributions: np.ndarray) -> np.ndarray:
    """ThiNet's greedy selection run to the end: the order in which channels would be removed."""
    x = contributions
    removed: list[int] = []
    remaining = list(range(x.shape[1]))
    running = np.zeros(x.shape[0])
    while remaining:
        err = ((running[:, None] + x[:, remaining]) ** 2).sum(0)
        pick = remaining.pop(int(np.argmin(err)))
        removed.append(pick)
        running += x[:, pick]
    return np.array(removed)


@register
class ThiNet(Importance):
    name = "thinet"
    reference = "Luo et al., ThiNet: A Filter Level Pruning Method for Deep Neural Network Compression, ICCV 2017"
    needs_data = True

    def __init__(self, calibration_images: int = rec.CALIBRATION_IMAGES, samples: int = rec.SAMPLES_PER_CONSUMER) -> None:
        self.calibration_images = calibration_images
        self.samples = samples

    def _sample(self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any) -> dict[str, rec.GroupSamples]:
        return rec.sample_contributions(model, space, example_inputs, data.calibration(self.calibration_images), self.samples)

    def scores(self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None) -> Scores:
        samples = self._sample(model, space, example_inputs, data)
        fallback = L1Importance().scores(model, space, example_inputs)
        out: Scores = {}
        for g in space.groups:
            if g.id not in samples:
                out[g.id] = fallback[g.id]
                continue
            order = greedy_removal_order(samples[g.id].contributions)
            score = np.empty(g.size)
            score[order] = np.arange(g.size)  # removed first = least important
            out[g.id] = score
        return out

    def reconstruct(self, model: nn.Module, pruned: nn.Module, space: PruningSpace, plan: Plan,
                    example_inputs: Sequence[torch.Tensor], data: Any = None) -> None:
        rec.rescale(pruned, plan, self._sample(model, space, example_inputs, data))
