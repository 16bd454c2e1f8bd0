"""The `Importance` interface: a pruning method scores every unit of every prunable group.

Criteria (L1, BN scale, ThiNet, LASSO) compute scores from a trained model; learned methods train
gates or masks first and then expose the same scores. Higher means more important. A plan keeps the
top-scoring units of each group, so a method never needs to know about budgets or rounding.

Two optional steps around the scoring let a method be faithful to its paper without the pipeline
knowing it: `prepare` changes the model before it is scored and pruned (Network Slimming's
sparsity training), `reconstruct` adjusts the pruned model's remaining weights (ThiNet's and
He et al.'s least-squares reconstruction). `ranking` says whether scores are comparable across
groups ("global": one threshold for all units, so per-layer widths are discovered) or only within
a group ("uniform": every group keeps the same fraction).
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from edgeprune.pipeline.prune.space import PruningSpace
from edgeprune.registry import Registry

#: group id -> one score per unit (channel or head)
Scores = dict[str, np.ndarray]


class Importance(abc.ABC):
    name: ClassVar[str] = ""
    #: the paper the method implements, shown in `compress --help` and reports
    reference: ClassVar[str] = ""
    #: "uniform" (scores comparable within a group only) or "global" (across all groups)
    ranking: ClassVar[str] = "uniform"
    #: whether the method needs --data (training or calibration samples)
    needs_data: ClassVar[bool] = False

    def prepare(self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None) -> nn.Module:
        """The model to score and prune (default: `model` itself, unchanged)."""
        return model

    @abc.abstractmethod
    def scores(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None
    ) -> Scores:
        """Score every unit of every group in `space`; `data` is the DataBundle when a method needs it."""

    def reconstruct(self, model: nn.Module, pruned: nn.Module, space: PruningSpace, plan: Any,
                    example_inputs: Sequence[torch.Tensor], data: Any = None) -> None:
        """Adjust `pruned` (made from `model` by `plan`) in place; default: nothing."""


METHODS: Registry[Importance] = Registry("pruning method")
register = METHODS.register
get_method = METHODS.create
method_names = METHODS.names
