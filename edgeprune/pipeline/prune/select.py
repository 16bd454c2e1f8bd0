"""From scores to a plan: keep the top-scoring units of each group at a global pruning level.

Widths are rounded to hardware-friendly multiples. Measured here on ONNX Runtime CPU, a ResNet-18
with odd widths ran 1.39x *slower* than unpruned and 8-aligned widths ~10% slower than 16-aligned,
while 16-aligned halving gave exactly the FLOPs ratio. Narrow groups (fewer than 4·round_to
channels) step by the largest power of two that still leaves them four widths to choose from, else a
16-channel CIFAR stage could never be pruned. The rounding is recorded per group in the plan's meta
(requested vs kept) so the report can say where it pruned more or less than the level asked.

Rounding every group to the nearest step in lockstep would leave a uniform level only a handful of
distinct configurations (a ResNet-20 has four), too coarse to land near a budget. So each group
rounds with its own phase (a low-discrepancy offset in [0, 1) steps, from the golden ratio): as the
level rises, groups drop a step one at a time instead of all at once. The configurations then
change one group-step at a time, every group's width is non-increasing in the level (so the cost
is monotone and bisection on the level is sound), and each group stays on its multiple.

Tied groups (`space.tied`: one width a config records for all of them) share one phase, so groups
of one size keep one width; groups of different sizes (a Swin's stages, whose config records one
`mlp_ratio` over hidden sizes doubling by stage) keep one *fraction*: the smallest keeps its rounded
width and each other keeps int(that width x its size / the smallest's), what a config's ratio
rebuilds (`int(mlp_ratio * dim)`).
"""

from __future__ import annotations

import numpy as np

from edgeprune.pipeline.prune.plan import GroupKeep, Plan
from edgeprune.pipeline.prune.space import PruningSpace, Scores

_GOLDEN = (5**0.5 - 1) / 2


def width_step(size: int, kind: str, round_to: int) -> int:
    """The multiple a segment's kept width is rounded to."""
    if kind == "heads":
        return 1
    step = max(1, round_to)
    while step > 1 and size < 4 * step:
        step //= 2
    return step


def plan_at_level(
    space: PruningSpace,
    scores: Scores,
    level: float,
    round_to: int,
    method: str = "",
    ranking: str = "uniform",
    depth: str = "off",
    block_scores: dict[str, float] | None = None,
    blocks_by_threshold: bool = False,
) -> Plan:
    """Prune `level` of the units, rounded per segment to its step, keeping the best-scored ones.

    "uniform": every segment keeps ~(1 - level) of its units. "global" (scores comparable across
    groups, e.g. BN scales): the `level` fraction of all units with the lowest scores is dropped, so
    the per-layer widths follow from the scores. Blocks go by count (the floor(level x n) least
    important), or, with `blocks_by_threshold` under global ranking (block scores on the units'
    scale, as TAS gives them), every block scored below the units' threshold goes.
    """
    dropped = _globally_dropped(space, scores, level) if ranking == "global" else None
    if depth == "off":
        removed_blocks: tuple[str, ...] = ()
    elif blocks_by_threshold and dropped is not None:
        cut = _threshold(space, scores, dropped)
        removed_blocks = tuple(sorted(b for b, v in (block_scores or {}).items() if v < cut))
    else:
        removed_blocks = blocks_at_level(block_scores or {}, level)
    if depth == "only":
        level = 0.0
        dropped = _globally_dropped(space, scores, level) if ranking == "global" else None
    groups: dict[str, GroupKeep] = {}
    requested: dict[str, float] = {}
    refs: dict[tuple[str, ...], tuple[int, int]] = {}  # a tied set's smallest size and the width it keeps
    for s in space.tied:  # the smallest group's width first: the others keep its fraction
        ref = min((space.get(gid) for gid in s), key=lambda g: g.size)
        refs[s] = ref.size, _rounded(ref.size, ref.size * (1.0 - level), ref.kind, round_to, _GOLDEN)
    for i, g in enumerate(space.groups):
        score = np.asarray(scores[g.id])
        keep: list[int] = []
        wanted = 0.0
        tied_set = space.tied_set(g.id)
        tied = tied_set is not None  # tied groups share one phase and keep one width (space.constrained)
        ref_size, ref_kept = refs[tied_set] if tied_set is not None else (g.size, 0)
        proportional = ref_size != g.size and len(g.segments) == 1  # one fraction of a tied set's smallest
        phase = _GOLDEN if tied else ((i + 1) * _GOLDEN) % 1.0  # one phase per group: a chunk's equal parts stay equal
        uniform = dropped is None or g.kind == "heads" or tied  # head scores are not on the channels' scale
        ideals = [
            len(seg) * (1.0 - level)
            if uniform or dropped is None
            else float(sum((g.id, u) not in dropped for u in seg))
            for seg in g.segments
        ]
        if g.even_by:  # every segment keeps the same count (a grouped conv's groups, a chunk's parts)
            ideals = [float(np.mean(ideals))] * len(ideals)
        for seg, ideal in zip(g.segments, ideals):
            seg_scores = score[list(seg)]
            if proportional:
                k = min(len(seg), int(ref_kept * len(seg) / ref_size))
            else:
                k = _rounded(len(seg), ideal, g.kind, round_to, phase)
            order = np.argsort(-seg_scores, kind="stable")
            keep += [seg[j] for j in order[:k]]
            wanted += ideal
        groups[g.id] = GroupKeep(g.kind, g.size, tuple(sorted(keep)))
        requested[g.id] = round(wanted, 2)
    meta = {
        "level": round(level, 6),
        "round_to": round_to,
        "method": method,
        "ranking": ranking,
        "depth": depth,
        "requested": requested,
        # groups whose units went the same count per segment, each ranked within its segment (a grouped conv's groups)
        "even": {g.id: g.even_by for g in space.groups if g.even_by},
    }
    return Plan(groups, meta=meta, removed_blocks=removed_blocks)


def _rounded(size: int, ideal: float, kind: str, round_to: int, phase: float) -> int:
    """`ideal` units of a segment of `size`, rounded to its step at `phase` (at least one step)."""
    step = width_step(size, kind, round_to)
    return int(min(size, max(step, np.floor(ideal / step + phase) * step)))


def blocks_at_level(block_scores: dict[str, float], level: float) -> tuple[str, ...]:
    """The floor(level x n) least important blocks (non-decreasing in the level, like the widths)."""
    order = sorted(block_scores, key=lambda name: (block_scores[name], name))
    return tuple(sorted(order[: int(np.floor(min(max(level, 0.0), 1.0) * len(order)))]))


def _globally_dropped(space: PruningSpace, scores: Scores, level: float) -> set[tuple[str, int]]:
    """The `level` fraction of all channel units with the lowest scores (ties broken by position)."""
    units = [(g.id, u) for g in space.groups if g.kind == "channels" for u in range(g.size)]
    pooled = np.concatenate(
        [np.asarray(scores[g.id], dtype=np.float64) for g in space.groups if g.kind == "channels"] or [np.zeros(0)]
    )
    order = np.argsort(pooled, kind="stable")
    return {units[i] for i in order[: round(min(max(level, 0.0), 1.0) * len(units))]}


def _threshold(space: PruningSpace, scores: Scores, dropped: set[tuple[str, int]]) -> float:
    """A score between the highest dropped and the lowest kept unit (-inf when none is dropped)."""
    if not dropped:
        return float("-inf")
    units = [
        (float(scores[g.id][u]), (g.id, u) in dropped)
        for g in space.groups
        if g.kind == "channels"
        for u in range(g.size)
    ]
    gone = max(v for v, d in units if d)
    kept = min((v for v, d in units if not d), default=gone)
    return (gone + kept) / 2


def widths_key(plan: Plan) -> tuple:
    """Two plans with the same key have the same shape (and the same cost)."""
    return (*(len(g.keep) for g in plan.groups.values()), *plan.removed_blocks)
