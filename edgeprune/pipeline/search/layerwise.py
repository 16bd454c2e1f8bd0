"""Layerwise budget search: a width per group, trading sensitivity against *measured* cost.

1. A cost predictor for a whole plan. For a latency budget it is the per-layer latency table
   (latency_table.py: each Conv/Linear timed alone on the target at a grid of input x output
   widths, then fitted to `CALIBRATION` whole plans measured on the target, spread from narrow
   to full: `random_plans(spread=True)`). For a FLOPs / params budget it is a cost table of
   single-group prunings (the figure with only that group narrowed) plus the overlap those savings
   count twice (a layer between two narrowed groups loses macs x (1 - f_in)(1 - f_out) less than
   the two single savings claim),
   counted exactly in FLOPs (cost_model.py) and converted at the table's cost per FLOP. Either
   predictor's error is measured on a few held-out random plans and on every candidate the search
   measures, and reported.
2. Allocation by one scalar, a Lagrange multiplier: each group takes the width minimizing
   drop(w) - lambda x saving(w) (sensitivity.py gives the drops, the predictor the saving of that
   group alone), so a group that costs little accuracy and saves much latency narrows first. The
   chosen savings grow with lambda, so the predicted cost falls monotonically and lambda is found
   by bisection to hit a target cost. The plan at that lambda is then widened step by step toward
   the target (`filled`): lambda alone reaches only each group's convex hull of widths.
3. The plan at that lambda is pruned and *measured*, and the next predicted target comes from the
   measured candidates (`next_target`): with one on each side of the goal, the goal's place between
   their measurements, mapped onto their predictions (regula falsi: the predictor's bias differs
   between a narrow and a wide plan, so one plan's measured/predicted ratio over-corrects the next,
   and the search oscillated on MobileNetV2); on one side only, the nearest one's measured/predicted
   ratio. A proposal already measured falls back to the lambda halfway (in log) between the closest
   candidates over and under, or, with all of them on one side, to a target moved further that way.
   Only measured candidates within the budget are ever returned.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.space import PruningSpace, Scores
from edgeprune.pipeline.search._targets import Point, between, closest, next_target
from edgeprune.pipeline.search.base import SEARCHES, Search, SearchContext, SearchResult, Step, none_met, timed_step
from edgeprune.pipeline.search.cost_model import CostModel
from edgeprune.pipeline.search.objective import Objective
from edgeprune.pipeline.search.sensitivity import Sensitivity, keep_top

#: held-out random plans measured to report the predictor's error before the search
HELD_OUT = 4
#: plans measured to calibrate the latency table (latency_table.fit_ratio: two free coefficients)
CALIBRATION = 6
#: how many times a repeated proposal's target is moved on before the search gives up
NUDGES = 20

#: a plan's predicted value on the objective's scale, from each group's kept width (absent: full)
#: and the residual blocks it removes
Predict = Callable[[Mapping[str, int], Sequence[str]], float]

#: a plan as the allocation chooses it: widths per group, removed blocks
Choice = tuple[dict[str, int], tuple[str, ...]]


@dataclasses.dataclass
class CostTable:
    baseline: float
    savings: dict[str, dict[int, float]]  # group -> width -> baseline value - value with that group alone narrowed
    per_flop: float  # measured saving per FLOP saved, over the whole table
    sizes: dict[str, int]

    def predict(self, widths: Mapping[str, int], cost: CostModel, removed: Sequence[str] = ()) -> float:
        """Single-group savings, the overlap they double count, and the FLOPs of removed blocks at
        the plan's widths, all converted at the table's cost per FLOP."""
        keep = {g: w / self.sizes[g] for g, w in widths.items()}
        additive = self.baseline - sum(self.savings[g].get(w, 0.0) for g, w in widths.items())
        exact = float(cost.expected_flops(keep))
        in_blocks = exact - float(cost.expected_flops(keep, dict.fromkeys(removed, 0.0))) if removed else 0.0
        return additive + self.per_flop * (overlap(cost, keep, exact) - in_blocks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "per_flop": self.per_flop,
            "sizes": self.sizes,
            "savings": {g: {str(w): v for w, v in s.items()} for g, s in self.savings.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostTable:
        return cls(
            d["baseline"],
            {g: {int(w): v for w, v in s.items()} for g, s in d["savings"].items()},
            d["per_flop"],
            d["sizes"],
        )


def overlap(cost: CostModel, keep: dict[str, float], exact: float) -> float:
    """FLOPs the single-group savings count twice: the `exact` cost of `keep` minus (baseline - sum
    of single savings)."""
    single = sum(cost.total - cost.expected_flops({g: f}) for g, f in keep.items())
    return exact - (cost.total - single)


def plan_for(
    space: PruningSpace,
    scores: Scores,
    widths: Mapping[str, int],
    meta: dict[str, Any] | None = None,
    removed: Sequence[str] = (),
) -> Plan:
    return Plan(
        {g.id: keep_top(g, scores, widths.get(g.id, g.size)) for g in space.groups},
        meta=dict(meta or {}),
        removed_blocks=tuple(removed),
    )


def build_cost_table(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    space: PruningSpace,
    scores: Scores,
    sensitivity: Sensitivity,
    objective: Objective,
    baseline_value: float,
    cost: CostModel,
    on_entry: Callable[[str], None] = lambda line: None,
) -> CostTable:
    """Evaluate every (group, narrower width) with the rest at full width."""
    savings: dict[str, dict[int, float]] = {}
    flops_saved = 0.0
    for g in space.groups:
        savings[g.id] = {g.size: 0.0}
        for w in sorted(sensitivity[g.id]):
            if w == g.size:
                continue
            pruned = apply(copy.deepcopy(model), plan_for(space, scores, {g.id: w}), example_inputs)
            value = objective.evaluate(pruned, f"table_{g.id.replace('.', '_').replace(':', '_')}_{w}").value
            savings[g.id][w] = baseline_value - value
            flops_saved += cost.total - float(cost.expected_flops({g.id: w / g.size}))
            on_entry(f"  cost table: {g.id} at {w}/{g.size}: {value:.4g} (saves {baseline_value - value:.4g})")
    measured = sum(v for s in savings.values() for v in s.values())
    return CostTable(
        baseline_value,
        savings,
        measured / flops_saved if flops_saved > 0 else 0.0,
        {g.id: g.size for g in space.groups},
    )


def random_plans(
    sensitivity: Sensitivity, blocks: Sequence[str], n: int, seed: int, spread: bool = False
) -> list[Choice]:
    """`n` random plans. Plain: each group at a random candidate width, each of `blocks` removed
    with probability 1/4 (held-out plans). `spread`: plan k centred on keeping (k + 1/2) / n of
    every group (each group's width the candidate nearest a jittered fraction, blocks removed more
    often the narrower the plan), so that the plans span narrow to full (calibration plans)."""
    rng = np.random.default_rng(seed)
    plans: list[Choice] = []
    for k in range(n):
        centre = (k + 0.5) / n
        widths = {}
        for g, drops in sensitivity.items():
            candidates = sorted(drops)
            if spread:
                goal = float(np.clip(centre + rng.normal(0.0, 0.15), 0.0, 1.0)) * candidates[-1]
                widths[g] = min(candidates, key=lambda w: abs(w - goal))
            else:
                widths[g] = int(rng.choice(candidates))
        chance = (1.0 - centre) / 2 if spread else 0.25
        plans.append((widths, tuple(b for b in blocks if rng.random() < chance)))
    return plans


def calibration_plans(sensitivity: Sensitivity, blocks: Sequence[str]) -> list[Choice]:
    """The `CALIBRATION` plans a latency table is fitted to, spread from narrow to full (seeded:
    the same plans on every run, so their measured ratios can be kept across budgets)."""
    return random_plans(sensitivity, blocks, CALIBRATION, seed=1, spread=True)


def measure_plans(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    space: PruningSpace,
    scores: Scores,
    plans: Sequence[Choice],
    objective: Objective,
    tag: str,
) -> list[float]:
    """Each plan pruned and evaluated on the objective (measured on the target for latency)."""
    values = []
    for k, (widths, removed) in enumerate(plans):
        pruned = apply(copy.deepcopy(model), plan_for(space, scores, widths, removed=removed), example_inputs)
        values.append(objective.evaluate(pruned, f"{tag}_{k}").value)
    return values


def predictor_error(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    space: PruningSpace,
    scores: Scores,
    sensitivity: Sensitivity,
    predict: Predict,
    objective: Objective,
    blocks: Sequence[str] = (),
    seed: int = 0,
) -> list[dict[str, float]]:
    """Predicted vs evaluated cost on `HELD_OUT` random plans (each group at a random candidate
    width, each of `blocks` removed with probability 1/4)."""
    plans = random_plans(sensitivity, blocks, HELD_OUT, seed)
    measured = measure_plans(model, example_inputs, space, scores, plans, objective, "heldout")
    return [
        {"predicted": (p := predict(*plan)), "measured": value, "error": p / value - 1.0}
        for plan, value in zip(plans, measured)
    ]


class LayerwiseSearch:
    def __init__(
        self,
        model: nn.Module,
        example_inputs: Sequence[torch.Tensor],
        space: PruningSpace,
        scores: Scores,
        sensitivity: Sensitivity,
        predict: Predict,
        objective: Objective,
        tol: float = 0.08,
        max_candidates: int = 8,
        on_step: Callable[[Step], None] = lambda step: None,
        block_drops: Mapping[str, float] | None = None,
    ) -> None:
        self.model, self.example_inputs, self.space, self.scores = model, tuple(example_inputs), space, scores
        self.sensitivity, self.predict, self.objective = sensitivity, predict, objective
        self.tol, self.max_candidates, self.on_step = tol, max_candidates, on_step
        full = predict({}, ())
        self.savings = {g: {w: full - predict({g: w}, ()) for w in drops} for g, drops in sensitivity.items()}
        self.block_drops = dict(block_drops or {})
        self.block_savings = {b: full - predict({}, (b,)) for b in self.block_drops}

    def choice_at(self, lam: float) -> Choice:
        """Each group's width minimizing drop - lam x saving (ties to the wider width), and the
        blocks whose drop is below lam x their saving (depth in the same trade-off)."""
        widths = {}
        for gid, drops in self.sensitivity.items():
            saving = self.savings[gid]
            widths[gid] = min(drops, key=lambda w: (drops[w] - lam * saving.get(w, 0.0), -w))
        removed = tuple(b for b, d in self.block_drops.items() if d < lam * self.block_savings[b])
        return widths, removed

    def filled(self, choice: Choice, target: float) -> Choice:
        """`choice` widened one candidate step at a time while it stays predicted within `target`,
        the step recovering the most drop per predicted cost first. The multiplier only reaches each
        group's lower convex hull of (saving, drop) points, so with few groups consecutive plans on
        its path lie far apart (ResNet-18 at 224: 0.54 of the baseline, then over 0.67); this fills
        the gap toward the target instead of settling far under it."""
        widths, removed = dict(choice[0]), choice[1]
        current = self.predict(widths, removed)
        while True:
            best: tuple[float, str, int, float] | None = None
            for gid, drops in self.sensitivity.items():
                wider = next((w for w in sorted(drops) if w > widths[gid]), None)
                if wider is None:
                    continue
                cost = self.predict({**widths, gid: wider}, removed)
                if cost > target:
                    continue
                value = (drops[widths[gid]] - drops[wider]) / max(cost - current, 1e-12)
                if best is None or value > best[0]:
                    best = (value, gid, wider, cost)
            if best is None:
                return widths, removed
            _, gid, widths[gid], current = best

    def predicted(self, choice: Choice) -> float:
        return self.predict(*choice)

    def lam_for(self, target: float) -> float:
        """The smallest lambda whose predicted cost is at most `target` (bisection in log space)."""
        lo, hi = 0.0, 1.0
        while self.predicted(self.choice_at(hi)) > target and hi < 1e12:
            lo, hi = hi, hi * 10
        for _ in range(60):
            mid = (lo + hi) / 2
            if self.predicted(self.choice_at(mid)) <= target:
                hi = mid
            else:
                lo = mid
        return hi

    def run(self) -> SearchResult:
        budget = self.objective.budget.value
        floor = budget * (1.0 - self.tol)
        goal = (floor + budget * (1.0 - self.objective.drift)) / 2
        target = goal
        steps: list[Step] = []
        points: list[Point] = []
        best = None
        tried: set[tuple[Any, ...]] = set()
        stop = "candidate limit reached"
        for index in range(1, self.max_candidates + 1):
            proposal = self._propose(target, points, goal, tried)
            if proposal is None:
                stop = "no untried plan left near the budget (between the closest candidates, or past them on one side)"
                break
            lam, (widths, removed) = proposal
            tried.add(self._key(widths, removed))
            predicted = self.predict(widths, removed)
            plan = plan_for(
                self.space, self.scores, widths, {"search": "layerwise", "lambda": lam, "predicted": predicted}, removed
            )
            step = timed_step(
                index,
                lam,
                predicted,
                # timed_step calls it at once, so the loop variables are this iteration's
                lambda: self.objective.evaluate(
                    apply(copy.deepcopy(self.model), plan, self.example_inputs),  # noqa: B023
                    f"candidate_{index:02d}",  # noqa: B023
                ),
                "lambda",
                "budget",
            )
            ev = step.evaluation
            steps.append(step)
            points.append(Point(lam, predicted, ev.value))
            self.on_step(step)
            if step.within_budget and (best is None or ev.value > best[1].value):
                best = (plan, ev)
            if step.within_budget and ev.value >= floor:
                stop = f"within tolerance (at most {self.tol:.0%} under budget)"
                break
            target = next_target(points, goal)
        if best is None:
            raise none_met(self.objective.budget, steps, "use the default search")
        return SearchResult(best[0], steps, best[1], stop)

    def _propose(
        self, target: float, points: Sequence[Point], goal: float, tried: set[tuple[Any, ...]]
    ) -> tuple[float, Choice] | None:
        """An untried plan for `target`. A repeat falls back, with candidates measured on both sides
        of the goal, to the lambda halfway between the closest two (None when that repeats too);
        with all of them on one side, to a target moved `tol / 2` further that way, until a new plan
        comes (at most `NUDGES` times: a plan repeats when the target moved less than one width step)."""
        over, under = closest(points, goal)
        for _ in range(NUDGES):
            lam = self.lam_for(target)
            choice = self.filled(self.choice_at(lam), target)
            if self._key(*choice) not in tried:
                return lam, choice
            if over is not None and under is not None:
                mid = between(points, goal)
                if mid is None:
                    return None
                choice = self.filled(self.choice_at(mid), target)
                return None if self._key(*choice) in tried else (mid, choice)
            target *= (1.0 - self.tol / 2) if over is not None else (1.0 + self.tol / 2)
        return None

    def _key(self, widths: Mapping[str, int], removed: Sequence[str]) -> tuple[Any, ...]:
        return (*(widths[g.id] for g in self.space.groups), tuple(removed))


@SEARCHES.register
class Layerwise(Search):
    """`--search layerwise`: sensitivity, the cost predictor and its held-out error as resumable
    stages, then `LayerwiseSearch`; a latency budget is predicted from the per-layer latency table."""

    name = "layerwise"
    summary = "a width per layer from its sensitivity and its cost in a per-layer latency table (needs --data)"

    @classmethod
    def refuse(cls, settings: Any) -> str | None:
        if settings.data is None or settings.depth == "only":
            return (
                "--search layerwise needs --data (its sensitivity is measured on calibration images) "
                "and --depth off or on (for blocks alone use --search uniform --depth only)"
            )
        return None

    def run(self, ctx: SearchContext) -> dict[str, Any]:
        from edgeprune.pipeline.prune import blocks as blocks_mod
        from edgeprune.pipeline.search import latency_table, sensitivity

        s, model, inputs, space, scores, objective = (
            ctx.settings,
            ctx.model,
            ctx.inputs,
            ctx.space,
            ctx.scores,
            ctx.objective,
        )
        sens = sensitivity.of_run(ctx)
        block_drops: dict[str, float] = {}
        if s.depth == "on":
            calibration = ctx.data.calibration(sensitivity.calibration_images(inputs[0]))
            block_drops = ctx.stage(
                "block_sensitivity",
                lambda: sensitivity.block_sensitivity(
                    model, [b.name for b in blocks_mod.find_blocks(model, inputs)], calibration
                ),
                key=ctx.cache_key,
            )
            ctx.log(f"  {len(block_drops)} removable residual blocks in the trade-off")
        cost = CostModel(model, space, inputs)
        sizes = {g.id: g.size for g in space.groups}
        value = ctx.baseline_value
        predictor: dict[str, Any] = {"kind": "latency_table" if ctx.budget.is_latency else "cost_table"}
        if ctx.budget.is_latency:
            plans = calibration_plans(sens, list(block_drops))
            table = latency_table.of_run(ctx, cost)
            ratios = ctx.stage(
                "latency_calibration",
                lambda: {
                    "ratios": [
                        v / value for v in measure_plans(model, inputs, space, scores, plans, objective, "calibration")
                    ]
                },
                key=ctx.cache_key | {"runtime": ctx.measurer.runtime.settings(), "precision": ctx.measurer.precision},
            )["ratios"]
            lat = table.calibrated(plans, ratios, sizes, cost)
            a, b, c = lat.terms
            predictor["calibration"] = {
                "plans": len(plans),
                "measured_ratios": ratios,
                "coefficients": {"layers": a, "activations": b, "fixed": c},
            }
            ctx.log(
                f"  latency table calibrated on {len(plans)} measured plans: ratio = "
                f"{a:.3f} x layers + {b:.3f} x activations + {c:.3f}"
            )
            predict: Predict = lambda widths, removed: lat.predict(widths, sizes, cost, removed)  # noqa: E731
        else:
            table_d = ctx.stage(
                "cost_table",
                lambda: build_cost_table(model, inputs, space, scores, sens, objective, value, cost, ctx.log).to_dict(),
            )
            counted = CostTable.from_dict(table_d)
            predict = lambda widths, removed: counted.predict(widths, cost, removed)  # noqa: E731
        held = ctx.stage(
            "predictor_held_out",
            lambda: {
                "rows": predictor_error(model, inputs, space, scores, sens, predict, objective, list(block_drops))
            },
        )["rows"]
        errors = ", ".join(f"{r['error']:+.1%}" for r in held)
        ctx.log(f"  cost predictor on {len(held)} held-out plans: errors {errors}")
        searcher = LayerwiseSearch(
            model,
            inputs,
            space,
            scores,
            sens,
            predict,
            objective,
            s.tol,
            s.max_candidates,
            on_step=ctx.on_step,
            block_drops=block_drops,
        )
        result = searcher.run()
        measured = [
            {
                "predicted": st.predicted_flops,
                "measured": st.evaluation.value,
                "error": st.predicted_flops / st.evaluation.value - 1.0,
            }
            for st in result.steps
        ]
        return result.to_dict() | {"predictor": predictor | {"held_out": held, "candidates": measured}}
