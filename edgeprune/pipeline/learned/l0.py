"""Hard-concrete gates (Louizos, Welling & Kingma, "Learning Sparse Neural Networks through L0
Regularization", ICLR 2018): a differentiable surrogate for 0/1 masks.

Each unit has a logit log_alpha. Training samples u ~ U(0, 1),
s = sigmoid((log u - log(1 - u) + log_alpha) / beta), stretches it to (gamma, zeta) and clips to
[0, 1], so a gate is exactly 0 or 1 with positive probability and in between otherwise. The
probability that a gate is non-zero, sigmoid(log_alpha - beta log(-gamma / zeta)), is the expected
L0 norm per unit: differentiable, it is what a sparsity constraint acts on. At test time the gate
is deterministic, clip(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

BETA = 2.0 / 3.0
GAMMA, ZETA = -0.1, 1.1


class HardConcrete(nn.Module):
    """`n` hard-concrete gates; `init` is the starting log_alpha (2.5 gives deterministic gates of
    1 and a keep probability of 0.98, so a trained network starts unchanged)."""

    def __init__(self, n: int, init: float = 2.5) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((n,), float(init)))

    def forward(self) -> torch.Tensor:
        """A sample in training mode, the deterministic gates in eval mode."""
        if not self.training:
            return self.deterministic()
        u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((u.log() - (-u).log1p() + self.log_alpha) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def deterministic(self) -> torch.Tensor:
        return (torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def keep_probability(self) -> torch.Tensor:
        """P(gate != 0) per unit: the expected L0 norm, differentiable in log_alpha."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA))
