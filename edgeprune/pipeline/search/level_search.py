"""Budget search over one global pruning level, with as few evaluations as possible.

Every candidate is physically pruned and evaluated (latency *measured* on the target, or FLOPs /
params counted). Between evaluations the search reasons in predicted-FLOPs space, where latency is
close to linear once widths are hardware-aligned: it interpolates between the nearest candidates
over and under the budget (regula falsi) to pick the next target cost, then finds the level whose
plan predicts that cost. When interpolation proposes a plan already seen it bisects the level
interval instead. It stops as soon as a candidate is within the budget (decided under it, with
the objective's drift allowance: decision.py, objective.py) and at least budget·(1−tol), or when
no untried plan is left between the closest candidates over and under the budget. `--search uniform`
runs it alone; the default search (guided.py) starts with it and then fills the gap it leaves.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.select import plan_at_level, widths_key
from edgeprune.pipeline.prune.space import PruningSpace, Scores
from edgeprune.pipeline.search.base import (
    SEARCHES,
    Search,
    SearchContext,
    SearchResult,
    Step,
    infeasible,
    none_met,
    timed_step,
)
from edgeprune.pipeline.search.cost_model import CostModel
from edgeprune.pipeline.search.objective import Evaluation, Objective

MAX_LEVEL = 1.0  # every segment down to one width step


@dataclasses.dataclass
class Point:
    """A candidate evaluated: its scalar (level), predicted FLOPs and evaluated value."""

    level: float
    flops: float
    value: float


def target_flops(over: Point, under: Point | None, target: float) -> float:
    """The predicted FLOPs expected to evaluate at `target`: interpolated between the closest
    candidates over and under it (regula falsi in predicted-FLOPs space), or, with none under yet,
    the one over scaled down (cost roughly proportional to FLOPs)."""
    if under is None:
        return over.flops * target / over.value
    slope = (over.value - under.value) / max(over.flops - under.flops, 1e-9)
    return under.flops + (target - under.value) / slope if slope > 0 else (over.flops + under.flops) / 2


class LevelSearch:
    def __init__(
        self,
        model: nn.Module,
        example_inputs: Sequence[torch.Tensor],
        space: PruningSpace,
        scores: Scores,
        objective: Objective,
        round_to: int,
        method: str,
        tol: float = 0.08,
        max_candidates: int = 8,
        on_step: Callable[[Step], None] = lambda step: None,
        ranking: str = "uniform",
        depth: str = "off",
        block_scores: dict[str, float] | None = None,
        blocks_by_threshold: bool = False,
    ) -> None:
        self.model = model
        self.example_inputs = tuple(example_inputs)
        self.space = space
        self.scores = scores
        self.objective = objective
        self.round_to = round_to
        self.method = method
        self.tol = tol
        self.max_candidates = max_candidates
        self.on_step = on_step
        self.ranking = ranking
        self.depth = depth
        self.block_scores = block_scores or {}
        self.blocks_by_threshold = blocks_by_threshold
        self.cost = CostModel(model, space, example_inputs)

    def plan(self, level: float) -> Plan:
        return plan_at_level(
            self.space,
            self.scores,
            level,
            self.round_to,
            self.method,
            self.ranking,
            self.depth,
            self.block_scores,
            self.blocks_by_threshold,
        )

    def run(self, baseline_value: float) -> SearchResult:
        budget = self.objective.budget.value
        floor, ceiling = budget * (1.0 - self.tol), budget * (1.0 - self.objective.drift)
        over = Point(0.0, self.cost.total, baseline_value)  # the tightest candidate known over budget
        under: Point | None = None  # the loosest candidate known within budget
        best: tuple[Plan, Evaluation] | None = None
        seen: dict[tuple[int, ...], float] = {widths_key(self.plan(0.0)): self.cost.total}
        narrowest = widths_key(self.plan(MAX_LEVEL))  # reached below MAX_LEVEL where widths bottom out (tied sets)
        steps: list[Step] = []
        stop = "candidate limit reached"
        for index in range(1, self.max_candidates + 1):
            level = self._propose(over, under, (floor + ceiling) / 2, seen)
            if level is None:
                stop = "no untried width configuration between the closest candidates over and under budget"
                break
            plan = self.plan(level)
            seen[widths_key(plan)] = self.cost.flops(plan)
            step = timed_step(
                index,
                level,
                self.cost.flops(plan),
                # timed_step calls it at once, so the loop variables are this iteration's
                lambda: self.objective.evaluate(
                    apply(copy.deepcopy(self.model), plan, self.example_inputs),  # noqa: B023
                    f"candidate_{index:02d}",  # noqa: B023
                ),
            )
            steps.append(step)
            self.on_step(step)
            ev = step.evaluation
            point = Point(level, step.predicted_flops, ev.value)
            if step.within_budget:
                under = point
                if best is None or ev.value > best[1].value:
                    best = (plan, ev)
                if ev.value >= floor:
                    stop = f"within tolerance (at most {self.tol:.0%} under budget)"
                    break
            else:
                over = point
                if level >= MAX_LEVEL or widths_key(plan) == narrowest:
                    raise infeasible(self.objective.budget, ev)
        if best is None:
            raise none_met(self.objective.budget, steps, "raise --max-candidates")
        return SearchResult(best[0], steps, best[1], stop)

    def _propose(self, over: Point, under: Point | None, target: float, seen: dict) -> float | None:
        """The next level to try, strictly between `over` and `under`, whose plan is new."""
        hi_level = under.level if under else MAX_LEVEL
        flops = target_flops(over, under, target)
        level = self.level_for(flops, over.level, hi_level)
        if self._is_new(level, seen):
            return level
        return self._nearest_new(flops, over.level, hi_level, seen, upper_inclusive=under is None)

    def _is_new(self, level: float, seen: dict) -> bool:
        """A plan is worth evaluating when its shape and its predicted cost both differ from every
        plan evaluated so far: two shapes of the same cost would measure the same."""
        plan = self.plan(level)
        if widths_key(plan) in seen:
            return False
        flops = self.cost.flops(plan)
        return all(abs(flops - f) > 0.002 * f for f in seen.values())

    def level_for(self, flops: float, lo: float, hi: float) -> float:
        """The smallest level in (lo, hi] whose predicted FLOPs are at most `flops` (widths are
        non-increasing in the level, so the predicted cost is monotone and bisection is sound)."""
        if self.cost.flops(self.plan(hi)) > flops:
            return hi
        for _ in range(30):
            mid = (lo + hi) / 2
            if self.cost.flops(self.plan(mid)) <= flops:
                hi = mid
            else:
                lo = mid
        return hi

    def _nearest_new(self, flops: float, lo: float, hi: float, seen: dict, upper_inclusive: bool) -> float | None:
        """The new plan in the level interval whose predicted cost is nearest the target; None
        when every plan in it has been tried. (Creeping in from one side wastes measurements.)"""
        levels = [lo + (hi - lo) * k / 256 for k in range(1, 257 if upper_inclusive else 256)]
        new = [lv for lv in levels if self._is_new(lv, seen)]
        return min(new, key=lambda lv: abs(self.cost.flops(self.plan(lv)) - flops), default=None)


@SEARCHES.register
class UniformSearch(Search):
    """`--search uniform`: the global level alone (every group keeps the same fraction)."""

    name = "uniform"
    summary = "one global pruning level, binary-searched on measured latency"

    def run(self, ctx: SearchContext) -> dict[str, Any]:
        s = ctx.settings
        searcher = LevelSearch(
            ctx.model,
            ctx.inputs,
            ctx.space,
            ctx.scores,
            ctx.objective,
            s.round_to,
            s.method,
            s.tol,
            s.max_candidates,
            on_step=ctx.on_step,
            ranking=ctx.method.ranking,
            depth=s.depth,
            block_scores=ctx.block_scores,
            blocks_by_threshold=ctx.method.blocks_on_unit_scale,
        )
        return searcher.run(ctx.baseline_value).to_dict()
