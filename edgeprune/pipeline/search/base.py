"""The `Search` interface: how a budget search plugs into the pipeline.

A search is one file whose class registers itself with `@SEARCHES.register` (`search/__init__.py`
imports the file); `compress` hands it a `SearchContext` (the model, its pruning space and scores,
the objective that measures or counts candidates, the run's stages for resumable work) and gets
back the chosen plan with every measured step. `--search NAME` picks one by name.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.budget import Budget
from edgeprune.pipeline.decision import UNDECIDED, TooNoisy
from edgeprune.pipeline.measure import TargetMeasurer
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.space import PruningSpace
from edgeprune.pipeline.search.objective import Evaluation, Objective
from edgeprune.registry import Registry


@dataclasses.dataclass
class Step:
    """One measured (or counted) candidate of a search."""

    index: int
    level: float
    predicted_flops: float
    evaluation: Evaluation
    within_budget: bool
    seconds: float
    #: what `level` is: the global pruning level ("level"), a Lagrange multiplier ("lambda"), the
    #: number of width steps a fill candidate added to the closest plan under the budget ("fill"),
    #: or, for a second decision on a candidate in the window, that candidate's index ("confirm")
    scalar: str = "level"
    #: what `predicted_flops` holds: predicted FLOPs, or ("budget") the budget's own figure as the
    #: layerwise search's latency table predicts it
    predicts: str = "flops"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            self.scalar: round(self.level, 6) if self.scalar == "level" else self.level,
            ("predicted_flops" if self.predicts == "flops" else "predicted"): self.predicted_flops,
            "within_budget": self.within_budget,
            "seconds": round(self.seconds, 3),
            **self.evaluation.to_dict(),
        }


@dataclasses.dataclass
class SearchResult:
    plan: Plan
    steps: list[Step]
    evaluation: Evaluation
    stop_reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
            "stop_reason": self.stop_reason,
        }


@dataclasses.dataclass
class SearchContext:
    """What a search works with; `stage(name, fn, key=...)` runs resumable work (stages.Stages)."""

    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    space: PruningSpace
    scores: dict[str, np.ndarray]
    objective: Objective
    budget: Budget
    baseline: dict[str, Any]  # the baseline stage's description (latency_ms, flops, params)
    baseline_value: float  # the baseline's figure of the budget's metric
    measurer: TargetMeasurer
    settings: Any  # Settings
    method: Any  # Importance: its ranking, and whether blocks go by its unit threshold
    block_scores: dict[str, float]
    data: Any  # DataBundle | None
    stage: Callable[..., dict[str, Any]]
    log: Callable[[str], None]
    #: what budget-free results (sensitivity) depend on, so other budgets in the same --out reuse them
    cache_key: dict[str, Any]
    #: plans this search's objective decided before it ran (Plan, value, within): a search may start
    #: its bracket from them (the int8 search from int8 of the unpruned model and of the float32 plan)
    prior: list[tuple[Plan, float, bool]] = dataclasses.field(default_factory=list)

    def on_step(self, step: Step) -> None:
        self.log(step_line(step, self.budget, self.settings.max_candidates))


class Search(abc.ABC):
    """Chooses a plan meeting the budget from measured (or counted) candidates."""

    name: str = ""
    #: one line for --help
    summary: str = ""

    @classmethod
    def refuse(cls, settings: Any) -> str | None:
        """Why this search cannot run with these settings (one line naming the fix), or None."""
        return None

    @abc.abstractmethod
    def run(self, ctx: SearchContext) -> dict[str, Any]:
        """{"plan": Plan.to_dict(), "steps": [Step.to_dict()], "stop_reason": str, ...}: only a
        candidate within the budget may be returned; none found is an EdgepruneError."""


SEARCHES: Registry[Search] = Registry("search")


def candidates_measured(steps: Sequence[dict[str, Any]]) -> int:
    """The candidates among a search result's steps (a confirmation decides one of them again)."""
    return sum("confirm" not in s for s in steps)


def candidates_named(indices: Sequence[int]) -> str:
    """ "candidate 3" or "candidates 3, 8", for a report or progress line."""
    return f"candidate{'s' if len(indices) > 1 else ''} {', '.join(map(str, indices))}"


def left_open_under(ev: Evaluation) -> bool:
    """Whether a decision read under the line it was judged against but its interval (or a busy
    machine's margin) left it undecided: on a loaded machine every candidate can end so (a timm
    EfficientNet-B0 plan read 0.64 of the baseline against a 0.70 budget)."""
    d = ev.decision
    return d is not None and d.verdict == UNDECIDED and d.estimate < d.threshold


def none_met(budget: Budget, steps: Sequence[Step], fix: str) -> EdgepruneError:
    """The error for a search that ends with no candidate decided within `budget`. When some
    candidate read under it but was left undecided, that is the machine's noise, not a budget out of
    reach: "machine too noisy to decide" (TooNoisy, exit 2), since "relax the budget" would be the
    wrong advice. Otherwise "no candidate met", with `fix` (what else to try)."""
    left_open = sorted({s.index for s in steps if left_open_under(s.evaluation)})
    if left_open:
        return TooNoisy(
            f"machine too noisy to decide: {candidates_named(left_open)} read under budget {budget.describe()} but the "
            f"machine's noise left {'them' if len(left_open) > 1 else 'it'} undecided, and no candidate was decided "
            "under it; re-run on a quieter machine, or raise --max-candidates"
        )
    lowest = min((s.evaluation.value for s in steps), default=float("nan"))
    return EdgepruneError(
        f"no candidate met budget {budget.describe()} in {len(steps)} tries "
        f"(lowest {lowest:.4g}); relax the budget or {fix}"
    )


def infeasible(budget: Budget, narrowest: Evaluation) -> EdgepruneError:
    """The error for a budget that the most pruning allowed does not reach: what that plan measured,
    with its unit and, for a relative budget, as a share of the baseline (a bare figure was read as
    a ratio where it was milliseconds: int8 ResNet-20 "reaches 0.2598", 0.36 of the baseline)."""
    share = f" ({narrowest.ratio:.3g} of the baseline)" if narrowest.ratio is not None else ""
    return EdgepruneError(
        f"budget {budget.describe()} is infeasible: the most pruning allowed reaches {budget.quantity(narrowest.value)}"
        f"{share} at best; relax the budget or lower --round-to"
    )


def timed_step(
    index: int,
    scalar_value: float,
    predicted: float,
    evaluate: Callable[[], Evaluation],
    scalar: str = "level",
    predicts: str = "flops",
) -> Step:
    """Evaluate one candidate and wrap it as a `Step` with its wall time."""
    t0 = time.perf_counter()
    ev = evaluate()
    return Step(index, scalar_value, predicted, ev, ev.within, time.perf_counter() - t0, scalar, predicts)


def step_line(step: Step, budget: Budget, limit: int) -> str:
    """The progress line of a candidate: what was proposed, what it measured, the verdict."""
    ev = step.evaluation
    unit = "ms" if budget.is_latency else budget.metric
    d = ev.decision
    verdict = (
        "within" if step.within_budget else ("undecided at" if d is not None and d.verdict == "undecided" else "over")
    )
    measured = (
        f"{ev.value:.4g} ms, ratio {d.describe()}"
        if d is not None and d.relative
        else f"{d.describe()}"
        if d is not None
        else f"{ev.value:.4g} {unit}"
    )
    predicted = (
        f"{step.predicted_flops:.4g} {unit}"
        if step.predicts == "budget"
        else f"{step.predicted_flops / 1e6:.1f} MFLOPs"
    )
    noisy = ev.measurement.stats.noise if ev.measurement is not None and ev.measurement.stats is not None else None
    busy = f" [busy: other processes used {d.busy:.0%} of the CPUs]" if d is not None and d.was_busy else ""
    what = (
        f"candidate {step.index} confirmed: exported and timed afresh"
        if step.scalar == "confirm"
        else f"candidate {step.index}/{limit}: {step.scalar} {step.level:.4g}"
    )
    return (
        f"  {what}, predicted {predicted} -> {measured}, "
        f"{verdict} budget {budget.value:.4g} "
        f"({step.seconds:.1f}s){busy}{f' [noisy: {noisy}]' if noisy and not busy else ''}"
    )
