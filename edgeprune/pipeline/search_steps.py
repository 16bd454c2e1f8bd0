"""The budget search as the pipeline runs it (`SearchSteps`, a base of compress.Pipeline): the
search at a precision, channels first and whole blocks where they cannot reach the budget
(`--depth auto`), the objective its candidates are judged by, and the int8 measurements the
precision policy (precision.py) weighs. Split from compress.py so each reads as one concern; the
attributes it reads are the pipeline's, declared here."""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline import precision as precision_mod
from edgeprune.pipeline import rundir
from edgeprune.pipeline.budget import Budget
from edgeprune.pipeline.checked import Checked
from edgeprune.pipeline.decision import TooNoisy
from edgeprune.pipeline.loading import LoadedModel
from edgeprune.pipeline.measure import TargetMeasurer
from edgeprune.pipeline.prune import blocks as blocks_mod
from edgeprune.pipeline.prune import space as space_mod
from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.select import plan_at_level
from edgeprune.pipeline.search import SEARCHES, SearchContext
from edgeprune.pipeline.search.objective import CountObjective, LatencyObjective, Objective
from edgeprune.pipeline.settings import Settings
from edgeprune.pipeline.stages import Progress, Stages


class SearchSteps:
    """The search's steps of a pipeline run; `compress.Pipeline` sets what is declared here."""

    loaded: LoadedModel
    settings: Settings
    c: Checked
    stage: Stages
    log: Progress
    budget: Budget
    model: nn.Module
    inputs: tuple[Any, ...]
    measurer: TargetMeasurer
    int8: precision_mod.QuantizedMeasurer | None
    space_d: dict[str, Any]
    space: space_mod.PruningSpace
    baseline_d: dict[str, Any]
    baseline_value: float
    scores_d: dict[str, Any]
    scores: dict[str, np.ndarray]
    block_scores: dict[str, float]

    @property
    def search_name(self) -> str:
        """--search, or `uniform` where tied groups must keep one width (one global level keeps one
        width in groups of one size; the other searches move groups one at a time)."""
        return "uniform" if self.space.tied else self.settings.search

    def _scored_blocks(self) -> dict[str, float]:
        """The removable blocks' importance: by the method on the calibration data, or, without data,
        by how much bypassing each changes the outputs on the example inputs (said in the log)."""
        method, data = self.c.method, self.c.data
        found = self._blocks
        on = "the calibration data" if data is not None else "the example inputs (no --data)"
        scores = self.stage(
            "blocks",
            lambda: (
                method.block_scores(self.model, found, data)
                if data is not None
                else blocks_mod.block_scores(self.model, found, self.inputs)
            ),
        )
        self.log(f"  {len(scores)} removable residual blocks, scored on {on}")
        return scores

    @functools.cached_property
    def _blocks(self) -> list[blocks_mod.Block]:
        """The removable residual blocks that the output format can record (ecosystems/), found once
        (each candidate is bypassed and run to check it): both searches of `auto` ask for them."""
        constraint = self.loaded.constraint
        found = blocks_mod.find_blocks(self.model, self.inputs)
        return [b for b in found if constraint is None or constraint.allows_block(b.name)]

    def _applied(self, plan: Plan) -> nn.Module:
        return apply(copy.deepcopy(self.model), plan, self.inputs)

    def _search_with(
        self,
        target: TargetMeasurer,
        stage_at: Callable[..., dict[str, Any]],
        log_at: Progress,
        prior: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """The budget search with `target` measuring the candidates (float32 or int8). Under --depth
        auto, channels first; where they cannot reach the budget (the narrowest plan over it, or no
        candidate within it) and the model has removable blocks, the search runs again with blocks
        removable too, and the result says why (a 3-layer RoBERTa's MLP width alone reached 5.5 ms
        against 4.9: "no candidate met"; with its layers, 0.27 of the baseline)."""
        s = self.settings
        if self.budget.met_by(self.baseline_value):
            log_at("  the unpruned model already meets the budget: exporting it unpruned")
            plan = plan_at_level(self.space, self.scores, 0.0, s.round_to, s.method)
            return {"plan": plan.to_dict(), "steps": [], "stop_reason": "baseline already within budget"}
        if s.depth in ("on", "only"):
            return self._searched(target, stage_at, log_at, s, self.block_scores, prior)
        if s.depth == "off" or self.space.groups:  # channels alone first
            try:
                result = self._searched(target, stage_at, log_at, dataclasses.replace(s, depth="off"), {}, prior)
            except TooNoisy:
                raise
            except EdgepruneError as err:
                if not self._blocks:
                    raise EdgepruneError(f"{err}{self._constraint_note()}") if s.depth == "auto" else err from None
                if s.depth == "off":
                    raise EdgepruneError(
                        f"{err}; or remove whole blocks too: --depth auto (the default) or on"
                    ) from None
                why = f"channels alone cannot reach the budget ({err})"
            else:
                return (
                    result
                    if s.depth == "off"
                    else result | {"depth": "off (--depth auto: channels alone reached the budget)"}
                )
        else:
            why = "no channel group may be cut"
        log_at(f"  {why}: searching again with whole blocks removable too (--depth auto)")

        def depth_stage(
            name: str, fn: Callable[[], dict[str, Any]], everywhere: bool = False, key: dict[str, Any] | None = None
        ) -> dict[str, Any]:  # the second search's stages beside the first's
            return stage_at("depth_" + name, fn, everywhere, key)

        try:
            result = self._searched(
                target, depth_stage, log_at, dataclasses.replace(s, depth="on"), self._scored_blocks(), prior
            )
        except TooNoisy:
            raise
        except EdgepruneError as err:
            raise EdgepruneError(f"{err}{self._constraint_note()}") from None
        return result | {"depth": f"on (--depth auto: {why})"}

    def _constraint_note(self) -> str:
        """What an output format's constraint left out of reach, for a search that could not meet the
        budget: the FLOPs its narrowest plan keeps against the unconstrained space's, and the blocks
        it lets go."""
        reach = self.space_d.get("constraint_reach")
        if self.loaded.constraint is None or not reach:
            return ""
        n = len(self._blocks)
        return (
            f"; {self.loaded.ecosystem}'s format lets only some widths go ({self.loaded.constraint.why}), so the "
            f"most pruning it allows keeps {reach['flops_floor']:.2f} of the FLOPs "
            f"({reach['unconstrained_flops_floor']:.2f} without it) and "
            + (f"only {n} whole block{'s' * (n > 1)} can be removed" if n else "no whole block can be removed")
        )

    def _searched(
        self,
        target: TargetMeasurer,
        stage_at: Callable[..., dict[str, Any]],
        log_at: Progress,
        s: Settings,
        block_scores: dict[str, float],
        prior: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """One search over widths (and the blocks in `block_scores`, under `s.depth`), started from
        the `prior` readings at its precision (precision.reading)."""
        if not self.space.groups and not block_scores:
            raise EdgepruneError(space_mod.nothing_prunable(self.space))
        cache_key = {
            "model_sha256": rundir.weights_sha256(self.model),
            "scores": self.scores_d,
            "round_to": s.round_to,
            "data": str(s.data),
            "input_shape": [list(t.shape) for t in self.inputs],
        }  # no budget: other budgets reuse it
        ctx = SearchContext(
            self.model,
            self.inputs,
            self.space,
            self.scores,
            self._objective(target),
            self.budget,
            self.baseline_d,
            self.baseline_value,
            target,
            s,
            self.c.method,
            block_scores,
            self.c.data,
            stage_at,
            log_at,
            cache_key,
            [(Plan.from_dict(r["plan"]), float(r["value"]), bool(r["within"])) for r in prior],
        )
        return SEARCHES.create(self.search_name).run(ctx) | {"strategy": self.search_name}

    def _search_at(self, precision: str, prior: list[dict[str, Any]]) -> dict[str, Any]:
        if precision == "fp32":
            return self.stage("search", lambda: self._search_with(self.measurer, self.stage, self.log, prior))
        int8 = self.int8
        assert int8 is not None
        return self.stage(
            "search_int8",
            lambda: self._search_with(
                int8, self.stage.prefixed("int8_"), lambda line: self.log(f"  int8 {line.lstrip()}"), prior
            ),
        )

    def _int8_unpruned(self) -> dict[str, Any]:
        """int8 of the unpruned model, judged against the budget as a search candidate is (the
        objective's drift allowance included)."""

        def measure() -> dict[str, Any]:
            assert self.int8 is not None
            ev = self._objective(self.int8).evaluate(self.model, "unpruned")
            plan = plan_at_level(self.space, self.scores, 0.0, self.settings.round_to, self.settings.method)
            return {
                "value": ev.value,
                "ratio": ev.ratio,
                "within": ev.within,
                "evaluation": ev.to_dict(),
                "plan": plan.to_dict(),
            }

        return self.stage("int8_unpruned", measure)

    def _int8_of_plan(self, searched: dict[str, Any]) -> dict[str, Any]:
        """int8 of the float32 search's plan, judged against the budget as a candidate is: whether
        an int8 search could keep more (precision.choose)."""

        def measure() -> dict[str, Any]:
            assert self.int8 is not None
            ev = self._objective(self.int8).evaluate(self._applied(Plan.from_dict(searched["plan"])), "int8_fp32_plan")
            return {"value": ev.value, "ratio": ev.ratio, "within": ev.within}

        return self.stage("int8_of_fp32_plan", measure)

    def _int8_unpruned_metric(self) -> dict[str, Any]:
        """The metric of the unpruned model in int8 on the runtime (the probe's file) beside PyTorch
        float32's, over the validation split: what `auto` weighs before choosing int8."""

        def measure() -> dict[str, Any]:
            assert self.int8 is not None and self.c.data is not None
            return self.int8.runtime_accuracy(
                self.int8.load("unpruned"), self.model, self.c.data.val, self.c.metric_name, self.c.metric
            )

        acc = self.stage("int8_unpruned_metric", measure)
        self.log(
            f"  int8 of the unpruned model on {self.settings.runtime}: {acc['metric']} {acc['runtime']:.4f} against "
            f"{acc['pytorch']:.4f} in PyTorch float32"
        )
        return acc

    def _objective(self, target: TargetMeasurer) -> Objective:
        """Candidates measured by `target` (float32 or int8). Counted figures are exact; a relative
        budget is decided against the float32 baseline stage's verified export, which the float32
        measurer loads; a machine whose noise is wider than the search's window (--tol) stops the run."""
        if not self.budget.is_latency:
            return CountObjective(self.budget, self.inputs)
        return LatencyObjective(
            self.budget, target, lambda: self.measurer.load("baseline"), resolution=self.settings.tol
        )
