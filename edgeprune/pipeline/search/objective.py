"""What the search evaluates a candidate on: latency measured on the target, or a counted figure.

An `Objective` turns a pruned model into the number its budget constrains. Latency is measured
(and re-measured when it sits at the budget's edge, where noise would decide the outcome); FLOPs and
parameters are counted exactly, so they never need a second look.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Sequence

import torch
from torch import nn

from edgeprune.pipeline.budget import Budget
from edgeprune.pipeline.counting import count
from edgeprune.pipeline.measure import Measurement, TargetMeasurer


@dataclasses.dataclass
class Evaluation:
    value: float
    measurement: Measurement | None = None
    remeasured: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"value": self.value, "remeasured": self.remeasured}
        if self.measurement is not None:
            d["latency_ms"] = self.measurement.stats.to_dict()
            d["max_abs_diff"] = self.measurement.max_abs_diff
        return d


class Objective(abc.ABC):
    """Evaluates pruned models against one budget."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, tag: str) -> Evaluation: ...

    def refine(self, ev: Evaluation) -> Evaluation:
        """A second, better look at a candidate whose evaluation is too close to call."""
        return ev


class LatencyObjective(Objective):
    #: a candidate within this fraction of the budget, or within its own p90/median spread, is
    #: measured again before the search decides on which side of the budget it lies
    EDGE = 0.02

    def __init__(self, budget: Budget, measurer: TargetMeasurer) -> None:
        super().__init__(budget)
        self.measurer = measurer

    def _value(self, m: Measurement) -> float:
        return m.stats.p90 if self.budget.statistic == "p90" else m.stats.median

    def evaluate(self, model: nn.Module, tag: str) -> Evaluation:
        m = self.measurer.measure(model, tag)
        return Evaluation(self._value(m), m)

    def refine(self, ev: Evaluation) -> Evaluation:
        assert ev.measurement is not None
        band = max(self.EDGE, min(0.1, ev.measurement.stats.spread - 1.0))
        if ev.remeasured or abs(ev.value - self.budget.value) > band * self.budget.value:
            return ev
        m = self.measurer.remeasure(ev.measurement)
        return Evaluation(self._value(m), m, remeasured=True)


class CountObjective(Objective):
    def __init__(self, budget: Budget, example_inputs: Sequence[torch.Tensor]) -> None:
        super().__init__(budget)
        self.example_inputs = example_inputs

    def evaluate(self, model: nn.Module, tag: str) -> Evaluation:
        c = count(model, self.example_inputs)
        return Evaluation(float(c.flops if self.budget.metric == "flops" else c.params))
