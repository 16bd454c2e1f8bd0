"""Regression-based channel pruning (He, Zhang & Sun, "Channel Pruning for Accelerating Very Deep
Neural Networks", ICCV 2017).

Both of the paper's steps:
1. Channel selection by LASSO regression: on sampled outputs of the next layer, the group's channel
   contributions Z (samples x channels) must reconstruct their sum y with a sparse selection vector:
   min (1/2m)||y - Z beta||^2 + lambda ||beta||_1. Raising lambda zeroes channels one after another;
   a channel's score is the lambda at which it enters the LASSO path (solved by coordinate descent
   with warm starts on a geometric grid), so keeping the top k is what raising lambda until k
   channels survive selects.
2. Feature-map reconstruction: every consuming layer's weights are re-solved by least squares on
   the kept input channels so that its outputs match the unpruned layer's on calibration data.
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


def lasso_entry_lambdas(
    z: np.ndarray, y: np.ndarray, grid: int = 40, iters: int = 100, tol: float = 1e-5
) -> np.ndarray:
    """The largest lambda on a geometric grid at which each coefficient is non-zero (0: never).

    Solved by FISTA (accelerated proximal gradient) on the Gram matrix with warm starts down the
    grid, stopping once every channel has entered: vectorized, so a 768-channel group takes ~1 s.
    Ties (several channels entering at one grid step) are broken by |beta| at the smallest lambda.
    """
    m = z.shape[0]
    scale = np.sqrt((z**2).mean(0)) + 1e-12  # standardize columns, as LASSO selection assumes
    zs = z / scale
    gram = zs.T @ zs / m
    corr = zs.T @ y / m
    step = 1.0 / max(float(np.linalg.eigvalsh(gram)[-1]), 1e-12)
    lam_max = float(np.abs(corr).max())
    beta = np.zeros(z.shape[1])
    entry = np.zeros(z.shape[1])
    for lam in lam_max * np.geomspace(1.0, 1e-4, grid):
        momentum, t = beta.copy(), 1.0
        for _ in range(iters):
            grad_point = momentum - step * (gram @ momentum - corr)
            new = np.sign(grad_point) * np.maximum(np.abs(grad_point) - step * lam, 0.0)
            t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
            momentum = new + ((t - 1.0) / t_next) * (new - beta)
            converged = np.abs(new - beta).max() < tol * max(float(np.abs(new).max()), 1e-3)
            beta, t = new, t_next
            if converged:
                break
        entry[(entry == 0) & (beta != 0)] = lam
        if entry.all():  # every channel has entered: the rest of the path changes no ranking
            break
    return entry + 1e-9 * lam_max * np.abs(beta) / (np.abs(beta).max() + 1e-12)


@register
class LassoChannelPruning(rec.NextLayerImportance):
    name = "lasso"
    reference = "He, Zhang & Sun, Channel Pruning for Accelerating Very Deep Neural Networks, ICCV 2017"

    def rank(self, samples: rec.GroupSamples) -> np.ndarray:
        return lasso_entry_lambdas(samples.contributions, samples.target)

    def reconstruct(
        self,
        model: nn.Module,
        pruned: nn.Module,
        space: PruningSpace,
        plan: Plan,
        example_inputs: Sequence[torch.Tensor],
        data: Any = None,
    ) -> None:
        rec.refit(model, pruned, plan, example_inputs, data.calibration(self.calibration_images))
