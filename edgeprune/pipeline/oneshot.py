"""One-shot pruning to a ratio, no budget and no measurement: what `edgeprune.prune` runs.

Kept apart from the `edgeprune.prune` wrapper so that callers who want more than the pruned module
(the zoo benchmark, tools that report what was left whole) get the space and the plan as well.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence

import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.loading import LoadedModel
from edgeprune.pipeline.methods import get_method
from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.select import plan_at_level
from edgeprune.pipeline.prune.space import DEFAULT_TIME_LIMIT_S, PruningSpace, discover, verified_plan


@dataclasses.dataclass
class PruneResult:
    model: nn.Module
    plan: Plan
    space: PruningSpace
    seconds: dict[str, float]  # wall time of each step: discover, scores, verify, apply


@modelrun.with_autograd
def prune_to_ratio(
    loaded: LoadedModel,
    ratio: float = 0.5,
    method: str = "l1",
    round_to: int = 16,
    unprunable: Sequence[str] = (),
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
) -> PruneResult:
    """Every prunable group of `loaded.model` keeps about (1 - ratio) of its units (a pruned copy)."""
    if not 0.0 <= ratio < 1.0:
        raise EdgepruneError(f"ratio {ratio} must be in [0, 1): the fraction of units to remove")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    space = discover(loaded.model, loaded.example_inputs, unprunable, time_limit_s=time_limit_s)
    seconds["discover"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = get_method(method).scores(loaded.model, space, loaded.example_inputs)
    plan = plan_at_level(space, scores, ratio, round_to, method)
    seconds["scores"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan, dropped = verified_plan(loaded.model, loaded.example_inputs, plan)
    if dropped:
        space = PruningSpace([g for g in space.groups if g.id not in {d.id for d in dropped}], space.skipped + dropped)
    seconds["verify"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        pruned = apply(copy.deepcopy(loaded.model), plan, loaded.example_inputs)
    seconds["apply"] = time.perf_counter() - t0
    return PruneResult(pruned, plan, space, seconds)
