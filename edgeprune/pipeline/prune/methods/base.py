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


_REGISTRY: dict[str, type[Importance]] = {}


def register(cls: type[Importance]) -> type[Importance]:
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str, **options: Any) -> Importance:
    from edgeprune.errors import EdgepruneError

    if name not in _REGISTRY:
        raise EdgepruneError(f"unknown pruning method {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)


def method_names() -> list[str]:
    return sorted(_REGISTRY)
