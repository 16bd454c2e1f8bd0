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
    #: latency / baseline latency, timed interleaved (relative budgets only)
    ratio: float | None = None
    reference: Measurement | None = None  # the baseline timed alongside, when `ratio` is set

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"value": self.value, "remeasured": self.remeasured}
        if self.measurement is not None:
            d["latency_ms"] = self.measurement.stats.to_dict()
            d["max_abs_diff"] = self.measurement.max_abs_diff
        if self.ratio is not None:
            d["ratio_to_baseline"] = self.ratio
        return d


class Objective(abc.ABC):
    """Evaluates pruned models against one budget."""

    #: how far under the budget a value must be to count as within it: the evaluation's noise
    guard: float = 0.0

    def __init__(self, budget: Budget) -> None:
        self.budget = budget

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, tag: str) -> Evaluation: ...

    def refine(self, ev: Evaluation) -> Evaluation:
        """A second, better look at a candidate whose evaluation is too close to call."""
        return ev


class LatencyObjective(Objective):
    """Latency measured on the target.

    An absolute budget (``20ms``) is compared with the candidate's own measurement. A relative one
    (``50%``, ``2x``) is compared with the candidate's latency *ratio* to the baseline, both timed
    interleaved in the same run (../shared/BENCHMARKING.md): on a shared machine the absolute time
    drifts by several percent between runs, the ratio does not. The value is then expressed in
    milliseconds as ratio x baseline, so it compares directly with the resolved budget.
    """

    #: a candidate within this fraction of the decision point, or within its own p90/median
    #: spread, is measured again before the search decides on which side of it it lies
    EDGE = 0.02
    #: medians of one model drift by 1-3% between interleaved runs on the shared 2-core machines
    guard = 0.03

    def __init__(self, budget: Budget, measurer: TargetMeasurer, baseline: Measurement | None = None) -> None:
        super().__init__(budget)
        self.measurer = measurer
        self.baseline = baseline if budget.fraction is not None else None

    def _stat(self, stats: Any) -> float:
        return stats.p90 if self.budget.statistic == "p90" else stats.median

    def _evaluation(self, m: Measurement, ref: Measurement | None, remeasured: bool) -> Evaluation:
        if ref is None:
            return Evaluation(self._stat(m.stats), m, remeasured)
        ratio = self._stat(m.stats) / self._stat(ref.stats)
        baseline_value = self.budget.value / float(self.budget.fraction or 1.0)
        return Evaluation(ratio * baseline_value, m, remeasured, ratio, ref)

    def _timed(self, m: Measurement) -> tuple[Measurement, Measurement | None]:
        if self.baseline is None:
            return m, None
        ref_stats, stats = self.measurer.interleaved([self.baseline, m])
        return dataclasses.replace(m, stats=stats), dataclasses.replace(self.baseline, stats=ref_stats)

    def evaluate(self, model: nn.Module, tag: str) -> Evaluation:
        m = self.measurer.prepare(model, tag)
        if self.baseline is None:
            m = self.measurer.time(m)
        return self._evaluation(*self._timed(m), remeasured=False)

    def refine(self, ev: Evaluation) -> Evaluation:
        assert ev.measurement is not None
        band = max(self.EDGE, min(0.05, ev.measurement.stats.spread - 1.0))
        decision = self.budget.value * (1.0 - self.guard)  # where the search decides over vs within
        if ev.remeasured or abs(ev.value - decision) > band * decision:
            return ev
        if ev.reference is None:
            return self._evaluation(self.measurer.time(ev.measurement), None, remeasured=True)
        m, ref = self._timed(ev.measurement)
        assert ref is not None
        pooled_m = dataclasses.replace(m, stats=ev.measurement.stats.merged(m.stats))
        pooled_ref = dataclasses.replace(ref, stats=ev.reference.stats.merged(ref.stats))
        return self._evaluation(pooled_m, pooled_ref, remeasured=True)


class CountObjective(Objective):
    def __init__(self, budget: Budget, example_inputs: Sequence[torch.Tensor]) -> None:
        super().__init__(budget)
        self.example_inputs = example_inputs

    def evaluate(self, model: nn.Module, tag: str) -> Evaluation:
        c = count(model, self.example_inputs)
        return Evaluation(float(c.flops if self.budget.metric == "flops" else c.params))
