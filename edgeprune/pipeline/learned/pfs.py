"""Pruning from Scratch (Wang, Zhang, Xie, Zhou, Su, Zhang & Hu, "Pruning from Scratch", AAAI 2020).

No pretrained model: the structure is learned on *randomly initialized, frozen* weights.
1. Every prunable channel group gets one scalar gate per channel (initialized to 1), applied where
   the group's channels are produced (after each producing layer's BatchNorm, see gating.py).
   Only the gates are trained, under the task loss plus an L1 sparsity term on the gates
   (`lam` times the mean |gate|), so channels the random network can do without are driven to 0.
2. The gates are the channel importance, compared *globally*: the budget search bisects one
   threshold over all gates (measuring each candidate on the target runtime, where the paper
   bisected on FLOPs), so per-layer widths follow from the gates.
3. The pruned architecture is then trained from scratch (`--recover scratch`, this method's
   default recovery), as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.learned import gating
from edgeprune.pipeline.prune.methods.base import Goal, Importance, Scores, register
from edgeprune.pipeline.prune.space import PruningSpace
from edgeprune.pipeline.recovery.trainer import TrainConfig, train


class _Gated(nn.Module):
    """The frozen network plus its gates, so one training loop optimizes the gates alone."""

    def __init__(self, net: nn.Module, sizes: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.gates = nn.ParameterList([nn.Parameter(torch.ones(n)) for n in sizes])

    def forward(self, *args: Any) -> Any:
        return self.net(*args)


@register
class PruningFromScratch(Importance):
    name = "pfs"
    reference = "Wang et al., Pruning from Scratch, AAAI 2020"
    ranking = "global"
    needs_data = True
    from_scratch = True
    default_recovery = "scratch"

    def __init__(self, lam: float = 0.5, epochs: int | None = None, steps: int | None = None, lr: float = 0.1) -> None:
        self.lam = lam
        self.config = TrainConfig.budget(epochs, steps, lr=lr, weight_decay=0.0)
        self.gates: dict[str, list[float]] = {}

    def prepare(
        self,
        model: nn.Module,
        space: PruningSpace,
        example_inputs: Sequence[torch.Tensor],
        data: Any = None,
        goal: Goal | None = None,
    ) -> nn.Module:
        """Learn the gates on `model`'s current (random) weights, which stay as they are."""
        gating.require_channel_groups(space, self.name)
        groups = [g.id for g in space.groups]
        points = gating.hook_points(model, space, example_inputs)
        holder = _Gated(model, [g.size for g in space.groups])
        index = {gid: i for i, gid in enumerate(groups)}
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)

        def gate(point: gating.HookPoint, out: torch.Tensor) -> torch.Tensor:
            return out * point.along(holder.gates[index[point.group]], out)

        def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = net(x)
            sparsity = torch.cat([g.abs() for g in holder.gates]).mean()
            return nn.functional.cross_entropy(logits, y) + self.lam * sparsity, logits

        try:
            with gating.channel_hooks(model, points, gate):
                train(holder, data.train, self.config, loss_fn, label="pfs gates")
        finally:
            for p in trainable:
                p.requires_grad_(True)
        self.gates = {gid: holder.gates[index[gid]].detach().abs().tolist() for gid in groups}
        return model

    def state(self) -> dict[str, Any]:
        return {"gates": self.gates}

    def load_state(self, state: dict[str, Any]) -> None:
        self.gates = state["gates"]

    def scores(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None
    ) -> Scores:
        if not self.gates:
            raise EdgepruneError("Pruning from Scratch scores come from its gates: run prepare first")
        return {g.id: np.asarray(self.gates[g.id]) for g in space.groups}
