"""From scores to a plan: keep the top-scoring units of each group at a global pruning level.

Widths are rounded to hardware-friendly multiples. Measured here on ONNX Runtime CPU, a ResNet-18
with odd widths ran 1.39x *slower* than unpruned and 8-aligned widths ~10% slower than 16-aligned,
while 16-aligned halving gave exactly the FLOPs ratio. Narrow groups (fewer than 4·round_to
channels) step by the largest power of two that still leaves them four widths to choose from, else a
16-channel CIFAR stage could never be pruned. The rounding is recorded per group in the plan's meta
(requested vs kept) so the report can say where it pruned more or less than the level asked.

Rounding every group to the nearest step in lockstep would leave a uniform level only a handful of
distinct configurations (a ResNet-20 has four), too coarse to land near a budget. So the rounding
error is diffused across groups (Floyd–Steinberg style, in units of steps): where one group is
rounded down, the next is more likely rounded up, and the total width tracks the level closely
while every group stays on its multiple.
"""
from __future__ import annotations

import numpy as np

from edgeprune.pipeline.prune.methods.base import Scores
from edgeprune.pipeline.prune.plan import GroupKeep, Plan
from edgeprune.pipeline.prune.space import PruningSpace


def width_step(size: int, kind: str, round_to: int) -> int:
    """The multiple a segment's kept width is rounded to."""
    if kind == "heads":
        return 1
    step = max(1, round_to)
    while step > 1 and size < 4 * step:
        step //= 2
    return step


def plan_at_level(space: PruningSpace, scores: Scores, level: float, round_to: int, method: str = "") -> Plan:
    """Every segment of every group keeps ~(1 - level) of its units, rounded to its step, by score."""
    groups: dict[str, GroupKeep] = {}
    requested: dict[str, float] = {}
    carry = 0.0  # rounding error so far, in steps
    for g in space.groups:
        score = np.asarray(scores[g.id])
        keep: list[int] = []
        group_carry = carry  # equal-size segments of one group (a chunk's parts) get equal widths
        for seg in g.segments:
            step = width_step(len(seg), g.kind, round_to)
            ideal = len(seg) * (1.0 - level) / step + group_carry
            k = int(min(len(seg), max(step, int(np.floor(ideal + 0.5)) * step)))
            carry += ideal - group_carry - k / step
            order = np.argsort(-score[list(seg)], kind="stable")
            keep += [seg[i] for i in order[:k]]
        groups[g.id] = GroupKeep(g.kind, g.size, tuple(sorted(keep)))
        requested[g.id] = round(g.size * (1.0 - level), 2)
    return Plan(groups, meta={"level": round(level, 6), "round_to": round_to, "method": method, "requested": requested})


def widths_key(plan: Plan) -> tuple[int, ...]:
    """Two plans with the same key have the same shape (and the same cost)."""
    return tuple(len(g.keep) for g in plan.groups.values())
