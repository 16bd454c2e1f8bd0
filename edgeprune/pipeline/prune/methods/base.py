"""The `Importance` interface: a pruning method scores every unit of every prunable group.

Criteria (L1, BN scale, ThiNet, LASSO) compute scores from a trained model; learned methods train
gates or masks first and then expose the same scores. Higher means more important. A plan keeps the
top-scoring units of each group, so a method never needs to know about budgets or rounding.
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

    @abc.abstractmethod
    def scores(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None
    ) -> Scores:
        """Score every unit of every group in `space`; `data` is calibration data when a method needs it."""


METHODS: Registry[Importance] = Registry("pruning method")
register = METHODS.register
get_method = METHODS.create
method_names = METHODS.names
