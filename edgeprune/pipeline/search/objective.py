"""What the search evaluates a candidate on: latency measured on the target, or a counted figure.

An `Objective` turns a pruned model into the number its budget constrains and a verdict: within
the budget or not. Latency is decided by `decision.py` (rounds interleaved with the baseline until
a confidence interval lies on one side of the budget; "undecided" counts as not within); FLOPs and
parameters are counted exactly, so their verdict is the comparison itself.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from edgeprune.pipeline.budget import Budget
from edgeprune.pipeline.counting import count
from edgeprune.pipeline.decision import UNDECIDED, UNDER, Decision, too_noisy
from edgeprune.pipeline.measure import Measurement, TargetMeasurer


@dataclasses.dataclass
class Evaluation:
    value: float
    measurement: Measurement | None = None
    #: latency / baseline latency, timed interleaved (relative budgets only)
    ratio: float | None = None
    reference: Measurement | None = None  # the baseline timed alongside, when `ratio` is set
    decision: Decision | None = None  # how a measured latency was judged against the budget
    #: a counted figure's verdict (a decision gives a measured one)
    counted_within: bool | None = None

    @property
    def within(self) -> bool:
        """Within the budget: decided under it (measured), or at most it (counted)."""
        return self.decision.verdict == UNDER if self.decision is not None else bool(self.counted_within)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"value": self.value}
        if self.measurement is not None and self.measurement.stats is not None:
            d["latency_ms"] = self.measurement.stats.to_dict()
            d["max_abs_diff"] = self.measurement.max_abs_diff
        if self.ratio is not None:
            d["ratio_to_baseline"] = self.ratio
        if self.decision is not None:
            d["decision"] = self.decision.to_dict()
        return d


class Objective(abc.ABC):
    """Evaluates pruned models against one budget."""

    #: how far under the budget a candidate must be decided to count as within it: what a later
    #: evaluation of the same model may move (0 for counted figures)
    drift: float = 0.0

    def __init__(self, budget: Budget) -> None:
        self.budget = budget

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, tag: str) -> Evaluation: ...

    def confirm(self, model: nn.Module, tag: str) -> Evaluation:
        """A second, independent evaluation of a model already evaluated (the same for a count)."""
        return self.evaluate(model, tag)


class LatencyObjective(Objective):
    """Latency measured on the target, judged by `TargetMeasurer.decide`.

    A relative budget (``50%``, ``2x``) is judged on the candidate's latency *ratio* to the
    baseline, timed interleaved in the same rounds (../shared/BENCHMARKING.md): on a shared machine
    the absolute time drifts by several percent between runs, the ratio does not. The value is then
    expressed in milliseconds as ratio x baseline, so it compares directly with the resolved
    budget. An absolute budget (``20ms``) is judged on the candidate's own rounds.

    A candidate counts as within the budget when decided under `budget x (1 - drift)`: the final
    verdict times the chosen model again, against fresh sessions, and between two decisions on the
    same pair of models the ratio moved by up to 1.4 % on this machine while it was otherwise quiet
    (ResNet-56 at 35 %: 0.3446, interval up to 0.3493, then 0.3493 in the final timing), so a
    candidate decided just under the budget would make the final verdict a coin flip.

    A candidate left undecided with an interval wider than `resolution` (the search's window under
    the budget) counts as not within, and the search goes on; `WIDE_IN_A_ROW` such decisions in a
    row stop the run with `TooNoisy`: a machine that cannot place any candidate in that window. One
    is a burst, not the machine: on a quiet machine (other processes 3 % of the CPUs) the demo's
    ResNet-20 read one candidate at [0.484, 0.545] of the baseline after 40 rounds, and stopping
    there ended `make demo` after its second candidate.
    """

    drift = 0.02
    #: wide undecided decisions in a row before the run stops as too noisy
    WIDE_IN_A_ROW = 3

    def __init__(
        self,
        budget: Budget,
        measurer: TargetMeasurer,
        load_baseline: Callable[[], Measurement] | None = None,
        resolution: float = 0.05,
    ) -> None:
        super().__init__(budget)
        self.measurer = measurer
        self._load_baseline = load_baseline if budget.fraction is not None else None
        self.baseline = self._load_baseline() if self._load_baseline is not None else None
        self.resolution = resolution
        self._wide: list[str] = []  # the latest decisions in a row left open wider than `resolution`

    def confirm(self, model: nn.Module, tag: str) -> Evaluation:
        """Decided again as the final verdict will be: the model exported and loaded afresh, and the
        baseline too (a session of it kept through the search read a ratio 3.5 % lower than fresh
        sessions of both did minutes later, timm RegNetX-400MF at 70 %). The fresh baseline then
        serves the rest of the search."""
        if self._load_baseline is not None:
            self.baseline = self._load_baseline()
        return self.evaluate(model, tag)

    def evaluate(self, model: nn.Module, tag: str) -> Evaluation:
        m = self.measurer.prepare(model, tag)
        relative = self.baseline is not None
        threshold = (self.budget.baseline_fraction if relative else self.budget.value) * (1.0 - self.drift)
        d, m, ref = self.measurer.decide(
            m, threshold, self.baseline, relative, self.budget.statistic, give_up=self.resolution
        )
        if d.verdict == UNDECIDED and d.resolution > self.resolution:
            self._wide.append(tag)
            if len(self._wide) >= self.WIDE_IN_A_ROW:
                raise too_noisy(
                    d,
                    f"{len(self._wide)} decisions in a row were left open wider than the search's "
                    f"+-{self.resolution:.0%} window ({', '.join(self._wide)}); the last",
                )
        else:
            self._wide.clear()
        scale = self.budget.value / self.budget.baseline_fraction if relative else 1.0
        return Evaluation(d.estimate * scale, m, d.estimate if relative else None, ref, d)


class CountObjective(Objective):
    def __init__(self, budget: Budget, example_inputs: Sequence[torch.Tensor]) -> None:
        super().__init__(budget)
        self.example_inputs = example_inputs

    def evaluate(self, model: nn.Module, tag: str) -> Evaluation:
        c = count(model, self.example_inputs)
        value = float(c.flops if self.budget.metric == "flops" else c.params)
        return Evaluation(value, counted_within=self.budget.met_by(value))
