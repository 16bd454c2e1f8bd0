"""Per-layer sensitivity: how much the model's outputs change when one group alone is narrowed.

For every prunable channel group and each of its candidate widths (the hardware-aligned multiples
the plans use), only that group is pruned to that width (keeping its best-scored units), the
pruned copy's BatchNorm statistics are re-estimated on calibration images (pruning leaves them
stale, which would charge a layer for an artefact that a few batches of recovery remove), and the
drop is the KL divergence of its outputs from the unpruned model's on held-out calibration images
(label-free, so it needs no labels and works for any output that is a distribution; other outputs
use the mean squared difference). A group's drops are made non-increasing in width: a wider layer
never counts as more harmful than a narrower one (measurement noise aside).

Its cost is groups x widths x a pruned copy and two forward passes, the largest of a run before
recovery (a YOLOv8n at 256 px: 18 minutes of a 25-minute search). So only `MEASURED` widths of
each group are measured (its narrowest and one between), and the others are interpolated along
the share of the group's importance scores they remove (0 at full width): the scores rank what goes
first, the measurements put a price on it (bench/sensitivity_cost.py: the A/B against measuring
every width, and the time). Even so a model of many groups made many trials (timm's ResNet-50 at
224 px: 74, 279 s), so above `ESTIMATE_ABOVE` groups every group's drop is estimated from a few
backward passes (_fisher.py) and only `CALIBRATION_GROUPS` groups are measured, to put the
estimates on the measurements' scale.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.pipeline.prune import blocks
from edgeprune.pipeline.prune.graph import Graph
from edgeprune.pipeline.prune.plan import GroupKeep, Plan
from edgeprune.pipeline.prune.select import width_step
from edgeprune.pipeline.prune.space import Group, PruningSpace, Scores, plan_changes, pruned_copy
from edgeprune.pipeline.search import _fisher

if TYPE_CHECKING:
    from edgeprune.pipeline.search.base import SearchContext

_BN = nn.modules.batchnorm._BatchNorm

#: group id -> {width: drop}
Sensitivity = dict[str, dict[int, float]]


#: most candidate widths per group: a 960-channel layer has 60 multiples of 16, and scoring each
#: costs a pruned copy and a BN re-estimation; evenly spread ones are enough to allocate between
MAX_CANDIDATES = 8
#: candidate widths measured per group below its full width (the narrowest and, with 2, one near the
#: middle); None measures every candidate
MEASURED: int | None = 2


#: a model with more channel/head groups than this has its map estimated (_fisher.py) and calibrated
#: on `CALIBRATION_GROUPS` measured groups; None measures every group
ESTIMATE_ABOVE: int | None = 12
CALIBRATION_GROUPS = 6

#: calibration pixels per scored trial: 256 CIFAR-sized images (half re-estimate BN, half are scored)
CALIBRATION_PIXELS = 256 * 32 * 32


def calibration_images(example: torch.Tensor) -> int:
    """How many calibration images a trial gets: 256 at 32x32, fewer for larger inputs (32 at
    224x224), so scoring a ResNet-18's ~70 trials takes minutes, not half an hour."""
    pixels = int(np.prod(example.shape[2:])) if example.dim() > 2 else 1
    return max(32, min(256, CALIBRATION_PIXELS // max(1, pixels)))


def candidate_widths(group: Group, round_to: int, most: int = MAX_CANDIDATES) -> list[int]:
    """The widths a group can take in a plan: multiples of its step up to its size, at most `most`
    of them evenly spread (the narrowest and the full width always among them)."""
    step = width_step(group.size, group.kind, round_to)
    widths = sorted({*range(step, group.size, step), group.size})
    if len(widths) <= most:
        return widths
    return sorted({widths[round(i * (len(widths) - 1) / (most - 1))] for i in range(most)})


def keep_top(group: Group, scores: Scores, width: int) -> GroupKeep:
    """The `width` best-scored units of a one-segment group, or the same fraction of each segment."""
    keep: list[int] = []
    for seg in group.segments:
        k = max(1, round(len(seg) * width / group.size))
        ranked = sorted(seg, key=lambda u: -float(scores[group.id][u]))
        keep += ranked[:k]
    return GroupKeep(group.kind, group.size, tuple(sorted(keep)))


@torch.no_grad()
def reestimate_bn(model: nn.Module, images: torch.Tensor, batch: int = 64) -> None:
    """Recompute every BatchNorm's running statistics from `images` (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative: every batch counts equally
    model.train()
    for i in range(0, modelrun.batch_len(images), batch):
        modelrun.call(model, _rows(images, slice(i, i + batch)))
    model.eval()


def drop(reference: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> float:
    """KL(reference || outputs) for 2-D logits, mean squared difference otherwise, summed over outputs."""
    total = 0.0
    for r, o in zip(reference, outputs):
        if r.dim() == 2:
            total += float(
                nn.functional.kl_div(
                    o.float().log_softmax(1), r.float().log_softmax(1), log_target=True, reduction="batchmean"
                )
            )
        else:
            total += float(((o.float() - r.float()) ** 2).mean())
    return total


def scorer(model: nn.Module, calibration: torch.Tensor | tuple[torch.Tensor, ...]) -> Callable[[nn.Module], float]:
    """A trial model's drop from `model`: half of `calibration` re-estimates the trial's BatchNorm
    statistics, the other half is scored."""
    half = modelrun.batch_len(calibration) // 2
    fit, held = _rows(calibration, slice(0, half)), _rows(calibration, slice(half, None))
    held_args = tuple(held) if isinstance(held, tuple) else (held,)
    reference = modelrun.run(model, held_args)

    def score(trial: nn.Module) -> float:
        reestimate_bn(trial, fit)
        return drop(reference, modelrun.run(trial, held_args))

    return score


def _rows(inputs: Any, rows: slice) -> Any:
    """Rows of a batch of inputs: one tensor, or a tuple of them (a model with several inputs)."""
    return tuple(t[rows] for t in inputs) if isinstance(inputs, tuple) else inputs[rows]


def sensitivity(
    model: nn.Module,
    space: PruningSpace,
    scores: Scores,
    example_inputs: Sequence[torch.Tensor],
    calibration: torch.Tensor,
    round_to: int,
    measured: int | None = MEASURED,
    estimate_above: int | None = ESTIMATE_ABOVE,
) -> Sensitivity:
    """Each channel/head group's drop at each candidate width, everything else at full width:
    `measured` of them per group measured (every one when None), the rest interpolated. The model
    is traced once and each trial cut from a copy by name (`pruned_copy`, what `apply` does after
    its own trace and two shape checks): that saved 5-25 % of a trial here, whose time is its two
    forward passes over the calibration images (bench/sensitivity_cost.py).

    A model of more than `estimate_above` groups has its channel groups priced by estimates of
    their output change (_fisher.py: a few backward passes for all of them), of which
    `CALIBRATION_GROUPS`, spread over the estimates' range, are measured and the rest mapped onto
    those measurements: the trials no longer grow with the model."""
    score = scorer(model, calibration)
    graph = Graph(model, example_inputs)
    widths = {g.id: candidate_widths(g, round_to) for g in space.groups}
    estimates: dict[str, dict[int, float]] = {}
    chosen: set[str] = set()
    if estimated(space, estimate_above):
        removed = {g.id: {w: _removed_units(g, scores, w) for w in widths[g.id]} for g in space.groups}
        estimates = _fisher.estimates(model, space, example_inputs, calibration, widths, removed)
        chosen = _spread(estimates, CALIBRATION_GROUPS)
    drops: dict[str, dict[int, float]] = {
        g.id: {
            w: score(pruned_copy(model, *plan_changes(graph, Plan({g.id: keep_top(g, scores, w)}))))
            for w in measured_widths(widths[g.id][:-1], measured)
        }
        for g in space.groups
        if g.id not in estimates or g.id in chosen
    }
    fitted = _fisher.calibrated(estimates, drops)
    return {
        g.id: monotone(
            fitted[g.id] if g.id not in drops else interpolated(g, scores, widths[g.id], {g.size: 0.0} | drops[g.id])
        )
        for g in space.groups
    }


def estimated(space: PruningSpace, estimate_above: int | None) -> bool:
    """Whether `sensitivity` estimates this space's map rather than measuring every group."""
    return estimate_above is not None and len(space.groups) > estimate_above


def trials(space: PruningSpace, round_to: int, measured: int | None, estimate_above: int | None) -> int:
    """The pruned copies `sensitivity` scores: every group's measured widths or, where the map is
    estimated, the calibration groups' (at most; the widest groups counted) and those of the groups
    without a place to mask (attention heads)."""
    per_group = {g.id: len(measured_widths(candidate_widths(g, round_to)[:-1], measured)) for g in space.groups}
    if not estimated(space, estimate_above):
        return sum(per_group.values())
    channels = [g.id for g in space.groups if g.kind == "channels"]
    calibrating = sorted(per_group[g] for g in channels)[-CALIBRATION_GROUPS:]
    return sum(calibrating) + sum(n for g, n in per_group.items() if g not in channels)


def _removed_units(group: Group, scores: Scores, width: int) -> list[int]:
    kept = set(keep_top(group, scores, width).keep)
    return [u for u in range(group.size) if u not in kept]


def _spread(estimated: dict[str, dict[int, float]], k: int) -> set[str]:
    """`k` groups evenly spread over the order of their estimated drop at their narrowest width."""
    order = sorted(estimated, key=lambda g: estimated[g][min(estimated[g])])
    if len(order) <= k:
        return set(order)
    return {order[round(i * (len(order) - 1) / (k - 1))] for i in range(k)}


def measured_widths(narrower: list[int], measured: int | None) -> list[int]:
    """Which of a group's narrower candidate widths are measured: all, or `measured` of them evenly
    spread from the narrowest (with 2, the narrowest and the middle one)."""
    if measured is None or len(narrower) <= measured:
        return narrower
    return sorted({narrower[(i * len(narrower)) // measured] for i in range(measured)})


def interpolated(group: Group, scores: Scores, widths: list[int], drops: dict[int, float]) -> dict[int, float]:
    """`drops` at every width of `widths`: a measured width keeps its figure, the others are read
    off the line between the measured ones on either side, the x axis being the share of the
    group's importance scores the width removes (its lowest-scored units go first)."""
    total = float(sum(abs(float(v)) for v in scores[group.id])) or 1.0

    def removed(w: int) -> float:
        kept = keep_top(group, scores, w).keep
        return 1.0 - sum(abs(float(scores[group.id][u])) for u in kept) / total

    known = sorted((removed(w), d) for w, d in drops.items())
    xs, ys = [x for x, _ in known], [y for _, y in known]
    return {w: drops[w] if w in drops else float(np.interp(removed(w), xs, ys)) for w in widths}


def block_sensitivity(
    model: nn.Module, found: Sequence[str], calibration: torch.Tensor | tuple[torch.Tensor, ...]
) -> dict[str, float]:
    """Each removable residual block's drop when it alone is bypassed, on the same scale as the
    groups' (BN re-estimated, KL on the held-out half), so depth and width trade in one currency."""
    score = scorer(model, calibration)
    inputs = modelrun.arguments(calibration)
    return {name: score(blocks.bypass(copy.deepcopy(model), [name], inputs)) for name in found}


def monotone(drops: dict[int, float]) -> dict[int, float]:
    """Make drops non-increasing in width: each width gets the largest drop of any width >= it."""
    fixed, worst = {}, 0.0
    for w in sorted(drops, reverse=True):
        worst = max(worst, drops[w])
        fixed[w] = worst
    return dict(sorted(fixed.items()))


def of_run(ctx: SearchContext) -> Sensitivity:
    """The sensitivity map of the run's model as a resumable stage kept across budgets (its key
    leaves the budget out: other budgets in the same --out reuse it); shared by the searches that
    use it, so running one after the other computes it once."""
    calibration = ctx.data.calibration(calibration_images(ctx.inputs[0]))
    n = trials(ctx.space, ctx.settings.round_to, MEASURED, ESTIMATE_ABOVE)
    ctx.log(
        f"  sensitivity of {len(ctx.space.groups)} groups: "
        + (
            f"estimated by {_fisher.PROBES} backward passes per image, calibrated on at most {n} measured trials"
            if estimated(ctx.space, ESTIMATE_ABOVE)
            else f"{n} measured trials"
        )
    )
    sens_d = ctx.stage(
        "sensitivity",
        lambda: {
            g: {str(w): v for w, v in d.items()}
            for g, d in sensitivity(
                ctx.model,
                ctx.space,
                ctx.scores,
                ctx.inputs,
                calibration,
                ctx.settings.round_to,
                MEASURED,
                ESTIMATE_ABOVE,
            ).items()
        },
        key=ctx.cache_key | {"measured_widths": MEASURED, "estimate_above": ESTIMATE_ABOVE},
    )
    return {g: {int(w): v for w, v in d.items()} for g, d in sens_d.items()}
