"""The default budget search (`--search guided`): bracket the budget along one path of plans, then
fill the gap by measured width steps, so the chosen plan lands within `--tol` (5 %) under it
(under the line a busy machine's decisions must clear, when they must: `Guided.window`) as far as
the target's readings allow: one reading of a plan moved 0.3-2.8 % between two timings on this
machine, quiet (bench/noise_floor.py), and the search stops on readings.

1. **Path.** Plans are proposed for a target in predicted cost (cost_model.py: FLOPs, or with
   the sensitivity guide under a latency budget the latency a per-layer table predicts; "FLOPs"
   below means either), the target interpolated between the closest measured candidates over and
   under the budget (regula falsi, `level_search.target_flops`). The path is the `Guide`:
   - with --data (channel widths, a uniformly ranked method): each group's width from its
     sensitivity (sensitivity.py, computed once per model and kept across budgets) traded against
     its cost by one multiplier and widened toward the target (the allocation of layerwise.py):
     layers that cost little accuracy for what they save narrow first. Under a latency budget, for
     float32 candidates, the cost is the layers' time in the per-layer latency table timed on the
     target (it times float32 layers; int8 candidates are priced by FLOPs)
     (latency_table.LatencyCost; its entries are cached on disk), left uncalibrated: no whole plan
     is measured for it, since only the savings are compared and the interpolation between
     measured candidates corrects the level. FLOPs misprice what a width saves on the target;
     against them, the search kept 7 % fewer FLOPs per unit of latency than layerwise's table on a
     ResNet-20, and lost 0.7 points of top-1 to it at 50 %;
   - otherwise: the global pruning level (select.plan_at_level), every group keeping the same
     fraction of its best-scored units, or the method's own global ranking.
2. **Fill.** When the path has no untried plan nearer the budget (on a small model its neighbours
   can lie 10-20 % of the latency apart: a ResNet-20 at `--budget 50%` stopped at 0.41), the
   closest plan under the budget is widened one segment width step at a time, the step that
   restores the most per predicted FLOP first (the sensitivity drop it takes back, or the share of
   the group's importance scores it puts back), up to the predicted cost of the closest plan over
   it (`fill_sequence`). The prefix of that sequence the interpolation asks for is measured, and
   the bracket narrows on the sequence until a candidate lands in the window, or two candidates
   one width step apart straddle the budget: the stop reason names that step.
3. **Only measurements decide.** Every candidate is pruned, exported, verified and judged by
   decision.py (rounds interleaved with the baseline until a confidence interval is on one side
   of the budget); predictions only choose what to measure next.
4. **Confirmed before it stops.** A measured candidate that lands in the window is decided a
   second time, exported and timed afresh, before the search stops on it: on this shared machine
   the same pair of models read 0.675 of the baseline in one decision and 0.699 (against a budget
   of 0.70) in the final one seconds later (224x224 MobileNetV2, both machine-quiet), so one
   decision just inside the window could make the final verdict a coin flip. A candidate the
   second decision does not put under the budget counts as over it, with that decision's value,
   and the search goes on. A confirmation is a decision, not a candidate: it is listed among the
   steps (`"confirm"`: the candidate's index) and does not count toward `--max-candidates`.
   A confirmed candidate keeps the higher of its two readings: the search stops on candidates
   because they read low, so a later reading of the same plan tends to be higher (a timm
   MobileNetV3 plan read 0.483 and 0.477 of the baseline in the search, 0.510 in the final verdict
   against a 0.50 budget). When the two disagree (the second not under the budget, or further
   from the first than the drift allowance) the plan is decided a third time and the two readings
   closest together stand for it: a single burst neither rejects it nor raises the allowance for
   the rest of the search (a ResNet-56 plan read 0.242 of the baseline, then 0.276 against a 0.25
   budget; the allowance went to 13.9 % on that one reading, and the search landed at 0.206 and
   lost 12 points of top-1 against the same search that read no burst).
5. **Earlier readings start the bracket.** Plans the objective decided before the search
   (`SearchContext.prior`: the int8 search gets int8 of the unpruned model and of the float32
   search's plan) are the bracket's first ends, in place of the float32 baseline, so the first
   candidate is aimed by two readings at the search's own precision. They are not candidates: a
   plan under the budget among them is never the result (int8 of the float32 plan keeps no more
   FLOPs than float32, and a tie goes to float32).
6. **Nothing returned unconfirmed.** A search that ends without a candidate in the window (no
   finer plan, or the candidate limit) returns its best candidate under the budget only once that
   has been confirmed too; one that does not hold gives way to the next (a ResNet-20 plan decided
   at 0.65 against a 0.70 budget on a loaded machine, never decided again, read 0.72 in a re-check).
   When none holds and no candidate is left, the run stops with the one-line "machine too noisy to
   decide" (exit 2), not "no candidate met": a timm MobileNetV3 plan read 0.318 of the baseline
   and, timed afresh, 0.361 against a 0.35 budget on a quiet machine. So does a search in which
   no candidate was decided under the budget while some read under it, left undecided by the
   machine's noise (beside a CPU hog, a timm EfficientNet-B0 plan read 0.64 of the baseline
   against a 0.70 budget): "no candidate met" is kept for budgets the candidates read over
   (`base.none_met`, which every search's end goes through).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.decision import TooNoisy
from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.select import widths_key
from edgeprune.pipeline.search import latency_table
from edgeprune.pipeline.search import sensitivity as sensitivity_mod
from edgeprune.pipeline.search._guides import (
    FillStep,
    Guide,
    LevelGuide,
    SensitivityGuide,
    counts_of,
    fill_sequence,
    no_finer,
    plan_of,
)
from edgeprune.pipeline.search.base import (
    SEARCHES,
    Search,
    SearchContext,
    SearchResult,
    Step,
    candidates_named,
    infeasible,
    none_met,
    timed_step,
)
from edgeprune.pipeline.search.cost_model import CostModel
from edgeprune.pipeline.search.level_search import LevelSearch, Point, target_flops
from edgeprune.pipeline.search.objective import Evaluation, Objective

#: the largest drift allowance a confirmation may raise the objective's to: a machine noisier than
#: that leaves the final verdict to say whether the plan is under (it may well not be)
MAX_DRIFT = 0.15
#: how often a path proposal that repeats a measured plan, with nothing under the budget yet, has
#: its target lowered before the search gives up
NUDGES = 20


def _apart(a: Evaluation, b: Evaluation) -> float:
    """How far two readings of one plan lie apart, relative to the lower."""
    return abs(a.value - b.value) / min(a.value, b.value)


def _read(ev: Evaluation) -> str:
    """What an evaluation read, for a progress line: the ratio to the baseline where it has one."""
    return f"{ev.ratio:.4g} of the baseline" if ev.ratio is not None else f"{ev.value:.4g}"


@dataclasses.dataclass
class _Measured:
    plan: Plan
    point: Point
    evaluation: Evaluation
    index: int = 0  # the candidate's number among the steps (0: the unpruned model)


class Guided:
    """The search itself (module docstring), on any `Guide`."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Sequence[torch.Tensor],
        guide: Guide,
        objective: Objective,
        round_to: int,
        tol: float = 0.05,
        max_candidates: int = 8,
        on_step: Callable[[Step], None] = lambda step: None,
        meta: dict[str, Any] | None = None,
        log: Callable[[str], None] = lambda line: None,
        prior: Sequence[tuple[Plan, float, bool]] = (),
    ) -> None:
        self.model, self.example_inputs, self.guide, self.objective = model, tuple(example_inputs), guide, objective
        self.round_to, self.tol, self.max_candidates = round_to, tol, max_candidates
        self.on_step, self.log = on_step, log
        self.meta = dict(meta or {})
        self.prior = list(prior)
        self.steps: list[Step] = []
        # the bracket: the closest candidates measured over (or not decided under) the budget and
        # decided within it; on the fill sequence, the neighbours of the gap left
        self.over: _Measured | None = None
        self.under: _Measured | None = None
        self.within: list[
            _Measured
        ] = []  # every candidate decided within the budget, at its higher reading when confirmed
        self._start: Plan | None = None  # where the fill sequence starts
        self._confirmed: set[tuple[Any, ...]] = set()  # the plans (widths_key) decided a second time
        self._failed: list[int] = []  # candidates whose confirmation at the end did not hold
        self._moved = 0.0  # the furthest two decisions on one plan moved apart (relative)

    @property
    def best(self) -> _Measured | None:
        """The candidate within the budget measured highest."""
        return max(self.within, key=lambda m: m.point.value, default=None)

    def window(self) -> tuple[float, float]:
        """Where a candidate may stop: (floor, goal), the window's bottom and middle. Its top is
        the budget less the objective's drift allowance, its width `tol` less the allowance it
        started with (of the budget): a drift allowance raised by a confirmation moves the window
        down whole.

        So does a busy machine. When the latest decision had to clear the line by the busy margin
        (decision.BUSY_MARGIN: contention biases ratios), a candidate decided under it reads under
        line x (1 - margin), 0.951 of the budget at the default drift allowance: the window's
        top, and the whole window moves down that far. Left at 0.95-0.98, it lay almost wholly
        where no decision could be "under": beside a CPU hog a ResNet-20 plan read 0.483 of the
        baseline, [0.481, 0.485], against a 0.49 line (0.475 with the margin), was left
        undecided, and the search ran on to a plan at 0.884 of the budget; a timm EfficientNet-B0
        ran to the candidate limit on the same."""
        top = self._ceiling() * (1.0 - self._margin())
        floor = top - self.objective.budget.value * (self.tol - type(self.objective).drift)
        return floor, (floor + top) / 2

    def _margin(self) -> float:
        """The busy margin the latest decision had to clear (0 on a quiet machine, or for counts)."""
        return next(
            (s.evaluation.decision.margin for s in reversed(self.steps) if s.evaluation.decision is not None), 0.0
        )

    def _ceiling(self) -> float:
        """The line a candidate must be decided under: the budget less the drift allowance."""
        return self.objective.budget.value * (1.0 - self.objective.drift)

    def run(self, baseline_value: float) -> SearchResult:
        full_plan = self.guide.propose(self.guide.cost.total)[1]
        over = _Measured(full_plan, Point(0.0, self.guide.cost.total, baseline_value), Evaluation(baseline_value))
        narrowest = widths_key(self.guide.propose(0.0)[1])
        seen = {widths_key(full_plan)}
        for plan, value, within in self.prior:  # readings of this objective from before the search (docstring, 5)
            m = _Measured(plan, Point(0.0, self.guide.cost.flops(plan), value), Evaluation(value))
            seen.add(widths_key(plan))
            if within and (self.under is None or value > self.under.point.value):
                self.under = m
            elif not within and (m.point.flops < over.point.flops or widths_key(plan) == widths_key(full_plan)):
                over = m
        self.over = over
        fill: list[FillStep] | None = None
        # the fill's bracket: sequence indices of the plans under (0: its start) and over (len + 1: the plan over)
        lo = hi = 0
        while True:
            if self._candidates() >= self.max_candidates:
                while not self._best_holds():  # no candidate left to measure: down the list
                    pass
                stop = "candidate limit reached"
                break
            goal = self.window()[1]
            target = target_flops(self.over.point, self.under.point if self.under else None, goal)
            proposal = None if fill is not None else self._on_path(target, seen)
            if proposal is None and fill is None:
                assert self.under is not None  # _on_path gives up only with a candidate on each side
                self._start = self.under.plan
                fill = fill_sequence(self.guide, self._start, self.over.point.flops, self.round_to)
                lo, hi = 0, len(fill) + 1
            if fill is not None:
                sequence = fill
                k = min(range(lo + 1, hi), key=lambda i: abs(sequence[i - 1].flops - target), default=None)
                if k is None:
                    if self._best_holds():
                        stop = no_finer(fill, hi)
                        break
                    fill = None  # the plan under did not hold: bracketed anew below it
                    continue
                scalar, plan, flops = float(k), self._fill_plan(fill, k), fill[k - 1].flops
            else:
                assert proposal is not None  # a None proposal started the fill above
                scalar, plan = proposal
                flops = self.guide.cost.flops(plan)
            seen.add(widths_key(plan))
            index = self._candidates() + 1
            step = self._measure(plan, index, scalar, flops, "fill" if fill is not None else self.guide.scalar)
            measured = _Measured(plan, Point(scalar, flops, step.evaluation.value), step.evaluation, index)
            within = step.within_budget
            floor = self.window()[0]  # as busy as this decision found the machine
            if within and measured.point.value >= floor and self.objective.drift > 0:  # in the window: decided again
                measured, within, drifted = self._confirm(measured)
                if drifted:
                    fill = None  # the window moved down: back to the path, bracketed anew
                floor = self.window()[0]
            if within:
                self.within.append(measured)
                if fill is not None:
                    lo, self.under = int(scalar), measured
                elif self.under is None or measured.point.value > self.under.point.value:
                    self.under = measured
                if measured.point.value >= floor:
                    if self._best_holds():
                        busy = ", lowered by the busy margin" if self._margin() else ""
                        below = 1.0 - floor / self.objective.budget.value
                        stop = f"within tolerance (at most {below:.0%} under budget{busy})"
                        break
                    fill = None  # an earlier, higher candidate did not hold: bracketed anew
            else:
                if widths_key(plan) == narrowest:
                    raise infeasible(self.objective.budget, measured.evaluation)
                if fill is not None:
                    hi, self.over = int(scalar), measured
                else:
                    self._over(measured)
        if self._failed:
            stop += f"; {candidates_named(self._failed)} did not hold under the budget when timed afresh"
        if self.best is None and self._failed:
            raise TooNoisy(
                f"machine too noisy to decide: {candidates_named(self._failed)} decided under budget "
                f"{self.objective.budget.describe()} did not hold when timed afresh (the same plan moved up to "
                f"{self._moved:.1%} between two decisions) and none of the {self._candidates()} candidates held under "
                "it; re-run on a quieter machine, or raise --max-candidates"
            )
        if self.best is None:
            raise none_met(self.objective.budget, self.steps, "raise --max-candidates")
        return SearchResult(self.best.plan, self.steps, self.best.evaluation, stop)

    def _confirm(self, m: _Measured) -> tuple[_Measured, bool, bool]:
        """Decide `m` a second time, exported and timed afresh, and a third time when the two
        disagree (the second not under the budget, or further from the first than the drift
        allowance): the two readings closest together stand for the plan (module docstring, 4).
        Returns `m` at the higher reading of that pair; whether it holds: most of its decisions
        were under the budget (a MobileNetV2 plan read 0.670, 0.670 and 0.671 of the baseline
        against a 0.686 line, its second decision left undecided by a wide interval) and that
        reading fits under the (possibly raised) line; and whether the drift allowance was raised."""

        def again() -> Evaluation:
            return self._measure(m.plan, m.index, float(m.index), m.point.flops, "confirm").evaluation

        readings = [m.evaluation, again()]  # (`m` was decided within: only such candidates are confirmed)
        if not readings[1].within or _apart(*readings) > self.objective.drift:
            readings.append(again())
        self._confirmed.add(widths_key(m.plan))
        pair = min(itertools.combinations(readings, 2), key=lambda p: _apart(*p))
        drifted = self._drifted(readings, pair, m.index)
        ev = max(pair, key=lambda e: e.value)
        held = 2 * sum(e.within for e in readings) > len(readings) and ev.value <= self._ceiling()
        return _Measured(m.plan, dataclasses.replace(m.point, value=ev.value), ev, m.index), held, drifted

    def _best_holds(self) -> bool:
        """Whether the search may stop on its best candidate under the budget: it was confirmed (or
        there is none, or nothing drifts), or it is now, and holds (module docstring, 6). One that
        does not hold goes to the over side of the bracket, the next best becomes the plan under."""
        best = self.best
        if best is None or self.objective.drift <= 0 or widths_key(best.plan) in self._confirmed:
            return True
        confirmed, held, _ = self._confirm(best)
        if best in self.within:  # (a drift allowance raised by this confirmation may have moved it over already)
            self.within.remove(best)
        if held:
            self.within.append(confirmed)
            return True
        self._failed.append(best.index)
        self.log(
            f"  candidate {best.index}, timed afresh, read {_read(confirmed.evaluation)}: no longer under the budget"
        )
        self._over(confirmed)
        self.under = self.best
        return False

    def _drifted(self, readings: list[Evaluation], pair: tuple[Evaluation, Evaluation], index: int) -> bool:
        """Raise the objective's drift allowance to how far the two closest of a plan's readings
        (`pair`) moved apart, when further than it allows (True then). On a host whose ratios wander
        by more than the interleaved rounds' interval shows (a timm EfficientNet-B0 plan read 0.339
        and, timed afresh seconds later, 0.370 against a 0.35 budget), a candidate must be decided
        that much under the budget to stay under it in the final verdict. A third reading that
        agrees with one of the first two sets the other aside as a burst rather than let it lower
        the line for the rest of the search. Candidates decided within before and now above the
        lowered line move to the over side of the bracket."""
        self._moved = max([self._moved] + [_apart(a, b) for a, b in itertools.combinations(readings, 2)])
        moved, shown = _apart(*pair), ", ".join(_read(ev) for ev in readings[1:])
        aside = next((ev for ev in readings if ev is not pair[0] and ev is not pair[1]), None)
        if aside is not None and moved <= self.objective.drift < min(_apart(aside, pair[0]), _apart(aside, pair[1])):
            self.log(
                f"  candidate {index} read {_read(readings[0])} and, timed afresh, {shown}: {_read(aside)} set aside "
                f"(the other two agree within {moved:.1%})"
            )
        if moved <= self.objective.drift:
            return False
        self.objective.drift = min(moved, MAX_DRIFT)
        ceiling = self._ceiling()
        for m in [m for m in self.within if m.point.value > ceiling]:
            self.within.remove(m)
            self._over(m)
        self.under = self.best
        self.log(
            f"  candidate {index} read {_read(readings[0])} and, timed afresh, {shown}: the closest two of its "
            f"decisions moved {moved:.1%} apart, so candidates must now be decided {self.objective.drift:.1%} under "
            "the budget (the drift allowance)"
        )
        return True

    def _over(self, m: _Measured) -> None:
        """Make `m`, decided over the budget, the bracket's plan over it when it is predicted
        cheaper than the one there: the bracket is narrowed in predicted cost, where the next plan is
        proposed, so a plan that reads over the budget although predicted cheaper (odd widths run
        slower than the unpruned model on ORT CPU: a RegNetX plan of 0.67 of the FLOPs read 1.08 of
        the baseline) moves the next proposal down from its own cost, not the unpruned model's."""
        assert self.over is not None
        if m.point.flops < self.over.point.flops:
            self.over = m

    def _candidates(self) -> int:
        """Candidates measured so far (confirmations are decisions on one of them, not candidates)."""
        return sum(s.scalar != "confirm" for s in self.steps)

    def _measure(self, plan: Plan, index: int, scalar: float, flops: float, kind: str) -> Step:
        """Prune, export and judge `plan` (candidate `index`, or its confirmation), as a recorded step."""
        tag = f"candidate_{index:02d}" + ("_confirm" if kind == "confirm" else "")
        judge = self.objective.confirm if kind == "confirm" else self.objective.evaluate
        step = timed_step(
            index,
            scalar,
            flops,
            lambda: judge(apply(copy.deepcopy(self.model), plan, self.example_inputs), tag),
            kind,
            self.guide.cost.unit,
        )
        self.steps.append(step)
        self.on_step(step)
        return step

    def _on_path(self, target: float, seen: set[tuple[Any, ...]]) -> tuple[float, Plan] | None:
        """The path's untried plan for `target`, strictly between the closest candidates over and
        under the budget in predicted cost; None once the path has none there (then the fill takes
        over). With nothing under the budget yet, a repeated plan lowers the target instead."""
        assert self.over is not None  # the path is searched once a candidate is over the budget
        for _ in range(NUDGES):
            scalar, plan = self.guide.propose(target)
            flops = self.guide.cost.flops(plan)
            new = widths_key(plan) not in seen and flops < self.over.point.flops
            if self.under is not None:
                return (scalar, plan) if new and flops > self.under.point.flops else None
            if new:
                return scalar, plan
            target = min(target, flops) * (1.0 - self.tol)
        raise EdgepruneError(
            f"no untried plan predicted under {target:.4g} {'FLOPs' if self.guide.cost.unit == 'flops' else 'ms'} on "
            "the search's path; lower --round-to or relax the budget"
        )

    def _fill_plan(self, fill: list[FillStep], k: int) -> Plan:
        """The plan `k` steps along the fill sequence."""
        assert self._start is not None
        counts = counts_of(self.guide.space, self._start)
        for s in fill[:k]:
            counts[s.group] = s.counts
        return plan_of(
            self.guide.space,
            self.guide.scores,
            counts,
            self._start.removed_blocks,
            self.meta | {"fill_steps": k, "fill_from": self._start.meta},
        )


@SEARCHES.register
class GuidedSearch(Search):
    """`--search guided`, the default (module docstring)."""

    name = "guided"
    summary = (
        "the default: bracket the budget along one path of plans (each layer's width from its sensitivity with --data, "
        "else one global level), then fill the gap by measured width steps until within --tol under the budget"
    )

    def run(self, ctx: SearchContext) -> dict[str, Any]:
        s = ctx.settings
        cost = CostModel(ctx.model, ctx.space, ctx.inputs)
        if ctx.data is not None and s.depth == "off" and ctx.method.ranking == "uniform":
            sens = sensitivity_mod.of_run(ctx)
            why = "each layer's width from its sensitivity on the calibration images"
            if ctx.budget.is_latency and ctx.measurer.precision == "fp32":  # (the table times float32 layers)
                cost = latency_table.LatencyCost(ctx.model, ctx.space, ctx.inputs, latency_table.of_run(ctx, cost))
                why += " against its latency in a per-layer table timed on the target"
            guide: Guide = SensitivityGuide.for_cost(
                ctx.model, ctx.inputs, ctx.space, ctx.scores, sens, ctx.objective, cost
            )
        else:
            guide = LevelGuide(
                LevelSearch(
                    ctx.model,
                    ctx.inputs,
                    ctx.space,
                    ctx.scores,
                    ctx.objective,
                    s.round_to,
                    s.method,
                    ranking=ctx.method.ranking,
                    depth=s.depth,
                    block_scores=ctx.block_scores,
                    blocks_by_threshold=ctx.method.blocks_on_unit_scale,
                )
            )
            why = "one global level" + ("" if ctx.data is not None else " (no --data to measure sensitivity on)")
        if ctx.prior:
            read = ", ".join(f"{value / ctx.baseline_value:.3f}" for _, value, _ in ctx.prior)
            why += f", from {len(ctx.prior)} earlier reading{'s' * (len(ctx.prior) > 1)} ({read} of the baseline)"
        ctx.log(f"  guided search along {why}")
        meta = {
            "search": "guided",
            "guide": guide.scalar,
            "cost": cost.name,
            "method": s.method,
            "round_to": s.round_to,
        }
        result = Guided(
            ctx.model,
            ctx.inputs,
            guide,
            ctx.objective,
            s.round_to,
            s.tol,
            s.max_candidates,
            ctx.on_step,
            meta,
            ctx.log,
            ctx.prior,
        ).run(ctx.baseline_value)
        result.plan.meta.update(meta)
        return result.to_dict() | {"guide": guide.scalar, "cost": cost.name, "drift_allowance": ctx.objective.drift}
