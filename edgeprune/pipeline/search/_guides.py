"""The guided search's plumbing (guided.py): the guides that rank where FLOPs go (one global level,
or the sensitivity map's allocation) and the fill sequence between two plans, one segment widened
at a time."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.pipeline.prune.plan import GroupKeep, Plan
from edgeprune.pipeline.prune.select import width_step
from edgeprune.pipeline.prune.space import Group, PruningSpace, Scores
from edgeprune.pipeline.search import sensitivity as sensitivity_mod
from edgeprune.pipeline.search.cost_model import CostModel
from edgeprune.pipeline.search.layerwise import LayerwiseSearch, plan_for
from edgeprune.pipeline.search.level_search import MAX_LEVEL, LevelSearch
from edgeprune.pipeline.search.objective import Objective

#: the longest fill sequence built (steps of one segment each); past it the gap is left to the path
FILL_STEPS = 4000


#: per group, the kept units of each segment (the best-scored ones)
Counts = dict[str, tuple[int, ...]]


class Guide(abc.ABC):
    """The path of plans the search brackets the budget on, and what a width step is worth."""

    #: the report's name for the path's scalar
    scalar: str = ""

    def __init__(self, space: PruningSpace, scores: Scores, cost: CostModel) -> None:
        self.space, self.scores, self.cost = space, scores, cost

    @abc.abstractmethod
    def propose(self, flops: float) -> tuple[float, Plan]:
        """The path's plan predicted closest to `flops` without exceeding it (its narrowest plan
        when none fits), with its scalar."""

    @abc.abstractmethod
    def gain(self, group: Group, narrow: tuple[int, ...], wide: tuple[int, ...]) -> float:
        """What widening `group` from `narrow` to `wide` kept units per segment gives back."""


class LevelGuide(Guide):
    """The global pruning level; a width step is worth the share of its group's scores it restores
    (under a global ranking, its scores themselves: they are comparable across groups)."""

    scalar = "level"

    def __init__(self, levels: LevelSearch) -> None:
        super().__init__(levels.space, levels.scores, levels.cost)
        self.levels = levels
        self.global_ranking = levels.ranking == "global"
        self._ranked = {
            g.id: [np.sort(np.asarray(levels.scores[g.id], dtype=np.float64)[list(seg)])[::-1] for seg in g.segments]
            for g in levels.space.groups
        }

    def propose(self, flops: float) -> tuple[float, Plan]:
        level = self.levels.level_for(flops, 0.0, MAX_LEVEL)
        return level, self.levels.plan(level)

    def gain(self, group: Group, narrow: tuple[int, ...], wide: tuple[int, ...]) -> float:
        ranked = self._ranked[group.id]
        added = sum(float(r[a:b].sum()) for r, a, b in zip(ranked, narrow, wide))
        if self.global_ranking:
            return added
        total = sum(float(r.sum()) for r in ranked)
        return added / total if total > 0 else sum(b - a for a, b in zip(narrow, wide)) / group.size


class SensitivityGuide(Guide):
    """Each group's width from its measured sensitivity against its predicted FLOPs (one
    multiplier, widened toward the target); a width step is worth the drop it takes back."""

    scalar = "lambda"

    def __init__(self, allocation: LayerwiseSearch, cost: CostModel) -> None:
        super().__init__(allocation.space, allocation.scores, cost)
        self.allocation = allocation
        self._curves = {
            g: (np.array(sorted(d), dtype=np.float64), np.array([d[w] for w in sorted(d)]))
            for g, d in allocation.sensitivity.items()
        }

    @classmethod
    def for_cost(
        cls,
        model: nn.Module,
        inputs: Sequence[torch.Tensor],
        space: PruningSpace,
        scores: Scores,
        sens: sensitivity_mod.Sensitivity,
        objective: Objective,
        cost: CostModel,
    ) -> SensitivityGuide:
        sizes = {g.id: g.size for g in space.groups}
        predict = lambda widths, removed: float(cost.expected_flops({g: w / sizes[g] for g, w in widths.items()}))  # noqa: E731
        return cls(LayerwiseSearch(model, inputs, space, scores, sens, predict, objective), cost)

    def propose(self, flops: float) -> tuple[float, Plan]:
        lam = self.allocation.lam_for(flops)
        widths, removed = self.allocation.filled(self.allocation.choice_at(lam), flops)
        return lam, plan_for(self.space, self.scores, widths, {"lambda": lam}, removed)

    def gain(self, group: Group, narrow: tuple[int, ...], wide: tuple[int, ...]) -> float:
        widths, drops = self._curves[group.id]
        return float(np.interp(sum(narrow), widths, drops) - np.interp(sum(wide), widths, drops))


@dataclasses.dataclass(frozen=True)
class FillStep:
    """One width step of the fill: the group widened, its segment counts after, the plan's FLOPs."""

    group: str
    counts: tuple[int, ...]
    flops: float


def counts_of(space: PruningSpace, plan: Plan) -> Counts:
    """The kept units of each segment of each group in `plan`."""
    out: Counts = {}
    for g in space.groups:
        kept = set(plan.groups[g.id].keep) if g.id in plan.groups else set(range(g.size))
        out[g.id] = tuple(len(kept.intersection(seg)) for seg in g.segments)
    return out


def widenings(group: Group, counts: tuple[int, ...], round_to: int) -> list[tuple[int, ...]]:
    """The one-step wider counts of `group`: one segment to its next multiple of its width step,
    or every segment together when they must stay equal (`even_by`)."""

    def wider(n: int, size: int) -> int:
        step = width_step(size, group.kind, round_to)
        return min(size, (n // step + 1) * step)

    sizes = [len(seg) for seg in group.segments]
    if group.even_by:
        if counts[0] >= sizes[0] or len(set(sizes)) > 1:
            return []
        return [tuple(wider(counts[0], sizes[0]) for _ in sizes)]
    return [
        (*counts[:i], wider(n, size), *counts[i + 1 :]) for i, (n, size) in enumerate(zip(counts, sizes)) if n < size
    ]


def fill_sequence(guide: Guide, start: Plan, ceiling: float, round_to: int, limit: int = FILL_STEPS) -> list[FillStep]:
    """Width steps from `start`, each the one giving back the most per predicted FLOP
    (`Guide.gain` / the FLOPs it adds), while the plan stays predicted strictly under `ceiling`
    (the plan over the budget: a step reaching its cost may be that very plan, already measured)."""
    space, cost = guide.space, guide.cost
    counts = counts_of(space, start)
    sizes = {g.id: tuple(len(seg) for seg in g.segments) for g in space.groups}
    removed = start.removed_blocks
    current = cost.flops_at(counts, sizes, removed)
    steps: list[FillStep] = []
    while len(steps) < limit:
        best: tuple[float, float, Group, tuple[int, ...], float] | None = None
        for g in space.groups:
            layers = cost.touching.get(g.id, set())
            before = cost.flops_at(counts, sizes, removed, layers)
            for option in widenings(g, counts[g.id], round_to):
                added = cost.flops_at({**counts, g.id: option}, sizes, removed, layers) - before
                if current + added >= ceiling:
                    continue
                value = guide.gain(g, counts[g.id], option) / max(added, 1e-9 * cost.total)
                if best is None or (value, -added) > (best[0], -best[1]):
                    best = (value, added, g, option, current + added)
        if best is None:
            return steps
        _, _, g, counts[g.id], current = best
        steps.append(FillStep(g.id, counts[g.id], current))
    return steps


def plan_of(space: PruningSpace, scores: Scores, counts: Counts, removed: Sequence[str], meta: dict[str, Any]) -> Plan:
    """The plan keeping the best-scored `counts` units of each segment."""
    groups = {}
    for g in space.groups:
        keep: list[int] = []
        for seg, n in zip(g.segments, counts[g.id]):
            order = np.argsort(-np.asarray(scores[g.id], dtype=np.float64)[list(seg)], kind="stable")
            keep += [seg[j] for j in order[:n]]
        groups[g.id] = GroupKeep(g.kind, g.size, tuple(sorted(keep)))
    return Plan(groups, meta=dict(meta), removed_blocks=tuple(removed))


def no_finer(fill: list[FillStep], hi: int) -> str:
    """Why no plan lies between the closest candidates under and over the budget, the fill's
    bracket ending at sequence index `hi` (guided.py)."""
    if hi <= len(fill):
        g = fill[hi - 1]
        return (
            f"no finer plan: the closest candidates under and over the budget differ by one width step "
            f"({g.group} to {sum(g.counts)} units), which crosses it"
        )
    return (
        "no finer plan: no single width step from the closest candidate under the budget stays predicted under the "
        "closest one over it (widths at their rounding steps)"
    )
