"""Network Slimming (Liu, Li, Shen, Huang, Yan & Zhang, "Learning Efficient Convolutional Networks
through Network Slimming", ICCV 2017).

1. Sparsity training: the task loss plus lambda * sum |gamma| over every BatchNorm scale, so the
   scales of channels the network can do without are driven toward zero (the paper's lambda is
   1e-4 for VGG/ResNet on CIFAR, trained for the full schedule; here the budget is yours).
2. Channels are ranked *globally* by |gamma|: one threshold for the whole network, so how much each
   layer loses is decided by the scales, not set per layer. Where BatchNorms are coupled (a residual
   stream), a channel's score is the mean |gamma| of its coupled BatchNorms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.prune.graph import Graph
from edgeprune.pipeline.prune.methods.base import Goal, Importance, Scores, register
from edgeprune.pipeline.prune.space import PruningSpace
from edgeprune.pipeline.recovery.trainer import TrainConfig, train

_BN = nn.modules.batchnorm._BatchNorm


@register
class NetworkSlimming(Importance):
    name = "slimming"
    reference = "Liu et al., Learning Efficient Convolutional Networks through Network Slimming, ICCV 2017"
    ranking = "global"
    needs_data = True

    def __init__(
        self, lam: float = 1e-4, epochs: int | None = None, steps: int | None = None, lr: float = 0.01
    ) -> None:
        self.lam = lam
        self.config = TrainConfig.budget(epochs, steps, lr=lr)

    def prepare(
        self,
        model: nn.Module,
        space: PruningSpace,
        example_inputs: Sequence[torch.Tensor],
        data: Any = None,
        goal: Goal | None = None,
    ) -> nn.Module:
        """Sparsity training in place (the model then gets pruned and, usually, fine-tuned)."""
        bns = [m for m in model.modules() if isinstance(m, _BN) and m.affine]
        if not bns:
            raise EdgepruneError(
                "Network Slimming ranks channels by BatchNorm scales and this model has no BatchNorm; use --method l1"
            )

        def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = net(x)
            l1 = sum(bn.weight.abs().sum() for bn in bns)
            return nn.functional.cross_entropy(logits, y) + self.lam * l1, logits

        train(model, data.train, self.config, loss_fn, label="slimming sparsity")
        return model

    @torch.no_grad()
    def scores(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None
    ) -> Scores:
        graph = Graph(model, example_inputs)
        out: Scores = {}
        for g in space.groups:
            if g.kind != "channels":
                raise EdgepruneError(
                    f"Network Slimming scores channels through BatchNorm; group {g.id} is {g.kind}: use --method l1"
                )
            total = np.zeros(g.size)
            count = np.zeros(g.size)
            for t in graph.coupled(g.id, range(g.size)):
                layer = cast(nn.modules.batchnorm._BatchNorm, model.get_submodule(t.name)) if t.kind == "bn" else None
                if layer is not None and layer.affine:
                    gamma = layer.weight.detach().abs().numpy()
                    np.add.at(total, list(t.roots), gamma[list(t.idxs)])
                    np.add.at(count, list(t.roots), 1)
            if not count.any():
                raise EdgepruneError(
                    f"group {g.id} has no BatchNorm to rank its channels by; mark it --unprunable or use --method l1"
                )
            out[g.id] = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        return out
