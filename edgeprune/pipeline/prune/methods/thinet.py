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

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.pipeline.prune.methods import reconstruction as rec
from edgeprune.pipeline.prune.methods.base import register
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
class ThiNet(rec.NextLayerImportance):
    name = "thinet"
    reference = "Luo et al., ThiNet: A Filter Level Pruning Method for Deep Neural Network Compression, ICCV 2017"

    def rank(self, samples: rec.GroupSamples) -> np.ndarray:
        order = greedy_removal_order(samples.contributions)
        score = np.empty(len(order))
        score[order] = np.arange(len(order))  # removed first = least important
        return score

    def reconstruct(
        self,
        model: nn.Module,
        pruned: nn.Module,
        space: PruningSpace,
        plan: Plan,
        example_inputs: Sequence[torch.Tensor],
        data: Any = None,
    ) -> None:
        rec.rescale(pruned, plan, self.sample(model, space, example_inputs, data))
