"""The compression pipeline: baseline → score → search → prune → export → measure → report.

Each stage's result is saved in the run directory (`rundir.RunDir`), so an interrupted run resumes
at the first unfinished stage. Everything a report states is measured by `TargetMeasurer` or
counted by `counting.count`; nothing is estimated without saying so.

This file is the order of the stages (`compress`, `Pipeline`); what they hand off to is beside it:
the user's input checked before anything is written (checked.py), running one resumable stage
(stages.py), the precision choice (precision.py), the final verdict (final.py) and the publishing
of the outputs (publish.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.exporters import OnnxExporter
from edgeprune.pipeline import distributed, rundir, training_stages
from edgeprune.pipeline import final as final_mod
from edgeprune.pipeline import precision as precision_mod
from edgeprune.pipeline import publish as publish_mod
from edgeprune.pipeline import report as report_mod
from edgeprune.pipeline.checked import Checked
from edgeprune.pipeline.counting import count
from edgeprune.pipeline.decision import Decision
from edgeprune.pipeline.loading import LoadedModel
from edgeprune.pipeline.measure import TargetMeasurer, repeats_for
from edgeprune.pipeline.prune import space as space_mod
from edgeprune.pipeline.prune.methods import Goal, Importance
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.select import plan_at_level
from edgeprune.pipeline.publish import CompressResult
from edgeprune.pipeline.rundir import RunDir
from edgeprune.pipeline.search.cost_model import CostModel
from edgeprune.pipeline.search_steps import SearchSteps
from edgeprune.pipeline.settings import Settings
from edgeprune.pipeline.stages import Progress, Stages
from edgeprune.runtime_bench import LatencyStats

__all__ = ["CompressResult", "Settings", "compress"]  # Settings lives in settings.py; callers import it from here too


@modelrun.with_autograd
def compress(
    loaded: LoadedModel, settings: Settings, out_dir: str | Path, progress: Progress = print
) -> CompressResult:
    """Run every stage; under torchrun, rank 0 measures and writes, all ranks train (distributed.py).

    Everything the user gave is checked before the first write (`Checked`); then --out is locked
    for the whole run and the stages run in order (`Pipeline`), each resumed when an earlier run
    finished it."""
    if loaded.pipeline == "decoder":  # a language model: its cost is per generated token (pipeline/decoder/)
        from edgeprune.pipeline.decoder.run import compress_decoder

        return compress_decoder(loaded, settings, out_dir, progress)
    ctx = distributed.init_from_env()
    log = progress if ctx.is_rank0 else (lambda line: None)
    checked = Checked.of(loaded, settings, out_dir, ctx)
    with rundir.locked(out_dir, enabled=ctx.is_rank0) as lock:
        if lock is not None and lock.taken_over:
            log(
                f"  took over the lock of a run that ended without releasing it (pid {lock.taken_over.get('pid', '?')})"
            )
        run = RunDir(out_dir, _config(loaded, settings), write=ctx.is_rank0)
        p = Pipeline(loaded, settings, checked, run, Stages(run, ctx, log), log)
        for step in (p.analyse, p.score, p.search, p.prune, p.recover):
            step()
        if not ctx.is_rank0:  # the other ranks only trained
            return CompressResult(p.pruned, p.plan, {}, Path(out_dir))
        p.measure_final()
        return p.publish()


class Pipeline(SearchSteps):
    """One run as it flows through the stages, in the order `compress` calls them: each method is
    a stage of the data flow, reading what the earlier ones left on the instance and leaving its
    own results there (the figures the report states come from these)."""

    space_d: dict[str, Any]
    space: space_mod.PruningSpace
    baseline_d: dict[str, Any]
    baseline_value: float
    scores_d: dict[str, Any]
    scores: dict[str, np.ndarray]
    choice: dict[str, Any]
    target: TargetMeasurer  # what measures the chosen precision: the float32 measurer or the int8 one
    plan: Plan
    dropped: list[Any]
    pruned: nn.Module
    final_d: dict[str, Any]

    def __init__(
        self, loaded: LoadedModel, settings: Settings, checked: Checked, run: RunDir, stage: Stages, log: Progress
    ) -> None:
        self.loaded, self.settings, self.c, self.run, self.stage, self.log = loaded, settings, checked, run, stage, log
        self.budget = checked.budget
        self.model, self.inputs = loaded.model, loaded.example_inputs
        self.original = loaded.model  # the teacher and the accuracy baseline
        self.measurer = TargetMeasurer(
            checked.runtime, self.inputs, run.work, settings.warmup, settings.repeats, OnnxExporter()
        )
        self.int8: precision_mod.QuantizedMeasurer | None = None
        self.block_scores: dict[str, float] = {}
        self.accuracy: dict[str, Any] | None = None
        self.recovery_d: dict[str, Any] | None = None
        self.runtime_acc: dict[str, Any] | None = None

    @property
    def met(self) -> bool:
        """Whether the final verdict (measure_final) put the model within the budget."""
        return final_mod.met(self.budget, self.final_d)

    def analyse(self) -> None:
        """The pruning space, the baseline timed on the target, and the budget resolved against it."""
        s, stage, log = self.settings, self.stage, self.log
        for line in self.loaded.swapped:
            log(f"  swapped for an equal layer edgeprune can cut: {line}")
        self.space_d = stage("space", self._discovered)
        self.space = space_mod.PruningSpace.from_dict(self.space_d)
        log(f"  {len(self.space.groups)} prunable groups, {len(self.space.skipped)} left whole")
        b = self.baseline_d = stage(
            "baseline", lambda: final_mod.describe(self.model, self.measurer, "baseline", self.inputs)
        )
        log(
            f"  baseline {b['latency_ms']['median']:.3f} ms (p90 {b['latency_ms']['p90']:.3f}), {b['flops'] / 1e6:.1f} "
            f"MFLOPs, {b['params'] / 1e6:.3f} M params{final_mod.noisy_note(LatencyStats.from_dict(b['latency_ms']))}"
        )
        self.baseline_value = final_mod.figure(self.budget, b)
        self.budget = self.budget.resolve(self.baseline_value)
        self.measurer.repeats = repeats_for(b["latency_ms"]["median"], s.repeats)
        log(f"  budget: {self.budget.describe()} (baseline {self.baseline_value:.4g})")

    def _discovered(self) -> dict[str, Any]:
        """The pruning space, narrowed to what the model's output format can express (ecosystems/)."""
        s, constraint = self.settings, self.loaded.constraint
        space = space_mod.discover(self.model, self.inputs, s.unprunable, s.analysis_time_s)
        if constraint is None:
            return space.to_dict()
        narrowed = space.constrained([s.roots for s in constraint.sets], constraint.why)
        reach = {"flops_floor": self._flops_floor(narrowed), "unconstrained_flops_floor": self._flops_floor(space)}
        self.log(
            f"  {constraint.why}: {len(narrowed.groups)} groups may be cut"
            f"{', each tied set to one width' if constraint.tied else ''} "
            f"(at most to {reach['flops_floor']:.2f} of the FLOPs; "
            f"{reach['unconstrained_flops_floor']:.2f} without the constraint)"
        )
        return narrowed.to_dict() | {"constraint_reach": reach}

    def _flops_floor(self, space: space_mod.PruningSpace) -> float:
        """The share of the model's FLOPs left by the narrowest plan `space` allows (widths only): what
        a format's constraint costs in reach, set against the same figure for the unconstrained space."""
        cost = CostModel(self.model, space, self.inputs)
        narrowest = plan_at_level(space, {g.id: np.zeros(g.size) for g in space.groups}, 1.0, self.settings.round_to)
        return round(cost.flops(narrowest) / cost.total, 4) if cost.total else 1.0

    def score(self) -> None:
        """The method's preparation (e.g. sparsity training) where it has one, then its unit and block scores."""
        s, method, data = self.settings, self.c.method, self.c.data
        if type(method).prepare is not Importance.prepare:
            goal = Goal(cost_fraction=self.budget.value / self.baseline_value, depth=_learned_depth(s.depth))
            self.model = training_stages.prepared(
                method, self.model, self.space, self.inputs, data, goal, self.run, self.stage
            )
            if type(method).prepared_architecture is not Importance.prepared_architecture:  # e.g. factorized Linears
                self.space_d = self.stage(
                    "prepared_space",
                    lambda: space_mod.discover(self.model, self.inputs, s.unprunable, s.analysis_time_s).to_dict(),
                )
                self.space = space_mod.PruningSpace.from_dict(self.space_d)
                self.log(
                    f"  prepared model: {len(self.space.groups)} prunable groups, {len(self.space.skipped)} left whole"
                )
        self.scores_d = self.stage(
            "scores",
            lambda: {gid: v.tolist() for gid, v in method.scores(self.model, self.space, self.inputs, data).items()},
        )
        self.scores = {gid: np.asarray(v) for gid, v in self.scores_d.items()}
        if s.depth in ("on", "only"):
            self.block_scores = self._scored_blocks()

    def search(self) -> None:
        """The budget search, in float32 or int8 or both as --precision says (precision.py chooses)."""
        c, data = self.c, self.c.data
        if c.quantizer is not None and data is not None:
            self.int8 = precision_mod.QuantizedMeasurer(
                self.measurer,
                c.quantizer,
                data.calibration(precision_mod.CALIBRATION_IMAGES),
                precision_mod.check_images(data.val),
            )
        self.choice = precision_mod.choose(
            precision_mod.Policy(
                mode=self.settings.precision_mode,
                fp32_why=self.settings.precision_why,
                unavailable=c.int8_unavailable,
                counted=not self.budget.is_latency,
                baseline_within=self.budget.met_by(self.baseline_value),
                probe=self._int8_unpruned,
                search=self._search_at,
                flops=lambda d: count(self._applied(Plan.from_dict(d["plan"])), self.inputs).flops,
                baseline_flops=self.baseline_d["flops"],
                baseline_value=self.baseline_value,
                int8_metric=self._int8_unpruned_metric if data is not None else None,
                max_drop=precision_mod.INT8_MAX_DROP
                if self.settings.max_accuracy_drop is None
                else self.settings.max_accuracy_drop,
                higher_is_better=getattr(c.metric, "higher_is_better", True),
                int8_of=self._int8_of_plan,
                budget_value=self.budget.value,
            ),
            self.log,
        )
        target = self.int8 if self.choice["precision"] == "int8" else self.measurer
        assert target is not None
        self.target = target

    def prune(self) -> None:
        """The chosen plan, checked on the model, cut out of a copy of it (and reconstructed where the method does)."""
        self.plan, self.dropped = space_mod.verified_plan(
            self.model, self.inputs, Plan.from_dict(self.choice["search"]["plan"])
        )
        for d in self.dropped:
            self.log(f"  {d.id} left whole: {d.reason}")
        self.plan.meta.update(
            arch=self.loaded.arch,
            num_classes=self.c.num_outputs,
            input_shape=list(self.loaded.input_shape),
            precision=self.choice["precision"],
            precision_why=self.choice["why"],
        )
        self.pruned = self._applied(self.plan)
        self.c.method.reconstruct(self.model, self.pruned, self.space, self.plan, self.inputs, self.c.data)

    def recover(self) -> None:
        """The metric before recovery, then the recovery (on every rank under torchrun)."""
        c, data, recovery = self.c, self.c.data, self.c.recovery
        if data is None:
            return

        def evaluate() -> dict[str, Any]:
            acc = {
                "metric": c.metric_name,
                "about": getattr(c.metric, "describe", None),
                "higher_is_better": getattr(c.metric, "higher_is_better", True),
                "baseline": c.metric(self.original, data.val),
                "pruned": c.metric(self.pruned, data.val),
            }
            return acc | ({"prepared": c.metric(self.model, data.val)} if self.model is not self.original else {})

        self.accuracy = self.stage("accuracy", evaluate)
        self.log(
            f"  {c.metric_name}: baseline {self.accuracy['baseline']:.4f}, "
            f"pruned before recovery {self.accuracy['pruned']:.4f}"
        )
        if recovery is not None and self.model is self.original and _prunes_nothing(self.plan):
            self.log(
                "  nothing pruned (e.g. int8 alone met the budget): no "
                f"{recovery.name}, the trained weights stand as they are"
            )
        elif recovery is not None:
            self.recovery_d = training_stages.recovered(
                recovery,
                self.pruned,
                self.original,
                data,
                self.settings,
                c.metric,
                self.run,
                self.stage.ctx,
                self.stage,
                self.log,
            )
            self.accuracy = dict(self.accuracy, recovered=self.recovery_d["final_metric"])

    def measure_final(self) -> None:
        """The published model exported, timed against the baseline until the verdict is decided,
        and its metric on the runtime where the runtime's precision may change it (rank 0)."""
        s, c, data = self.settings, self.c, self.c.data
        self.plan.save(self.run.path("plan.json"))
        # the door's format first: its `save` may bring the module's own metadata in step with the cut
        # (a Hugging Face model's config), which model.pt then keeps too
        self.native_d = publish_mod.native(self.loaded, self.pruned, self.plan, self.run, self.log)
        torch.save(modelrun.picklable(self.pruned), self.run.path("model.pt"))
        torch.save(self.pruned.state_dict(), self.run.path("state_dict.pt"))
        self.final_d = self.stage(
            "final",
            lambda: final_mod.judge(
                self.pruned,
                self.measurer,
                self.target,
                self.inputs,
                self.budget,
                s.tol,
                self.baseline_d["latency_ms"]["median"],
            ),
        )
        if data is not None and (
            self.target is self.int8 or c.runtime.reduced_precision or s.max_accuracy_drop is not None
        ):
            acc = self.runtime_acc = self.stage(
                "runtime_accuracy",
                lambda: self.target.runtime_accuracy(
                    self.target.load("model"), self.pruned, data.val, c.metric_name, c.metric
                ),
            )
            self.log(
                f"  {c.metric_name} on {s.runtime} ({self.choice['precision']}) vs PyTorch float32 over "
                f"{acc['images']} validation images: {acc['runtime']:.4f} vs {acc['pytorch']:.4f}"
            )
        if s.max_accuracy_drop is not None:
            assert self.accuracy is not None and self.runtime_acc is not None
            final_mod.refuse_accuracy_drop(
                s,
                self.accuracy["baseline"],
                self.runtime_acc["runtime"],
                self.choice["precision"],
                self.final_d,
                self.baseline_d["flops"],
                self.met,
                self.run,
                c.metric_name,
            )
        f = self.final_d
        decision = Decision.from_dict(f["decision"])
        ratio = decision.describe() if decision.relative else f"{1 / f['speedup']:.3f}"
        self.log(
            f"[result] {self.choice['precision']}: {f['final']['latency_ms']['median']:.3f} ms vs baseline "
            f"{f['baseline']['latency_ms']['median']:.3f} ms (ratio {ratio}, x{f['speedup']:.2f}), "
            f"budget {self.budget.describe()}: {'MET' if self.met else 'MISSED'}{final_mod.busy_note(decision)}"
            f"{final_mod.noisy_note(LatencyStats.from_dict(f['final']['latency_ms']))}"
        )

    def publish(self) -> CompressResult:
        """report.json and report.md (report.py) from what the stages measured, then every output
        published together (publish.py)."""
        s, c, loaded = self.settings, self.c, self.loaded
        constraint = loaded.constraint
        rep = report_mod.assemble(
            model={
                "source": loaded.source,
                "arch": loaded.arch,
                "input_shape": list(loaded.input_shape),
                "swapped": list(loaded.swapped),
                "ecosystem": loaded.ecosystem,
                "input_names": list(loaded.input_names),
                "inputs": loaded.inputs_about,
                "preprocess": loaded.preprocess.to_dict() if loaded.preprocess else None,
                "constraint": constraint.to_dict() | {"reach": self.space_d.get("constraint_reach")}
                if constraint
                else None,
            },
            native=self.native_d,
            settings=s,
            runtime=c.runtime.settings() | {"warmup": s.warmup, "repeats": self.measurer.repeats},
            budget=self.budget,
            met=self.met,
            baseline=self.baseline_d,
            final=self.final_d,
            method=c.method,
            search=self.choice["search"],
            space=self.space,
            plan=self.plan,
            left_whole=self.space_d["skipped"] + [dataclasses.asdict(d) for d in self.dropped],
            timings=self.stage.timings,
            timings_within=self.stage.within,
            accuracy=self.accuracy,
            runtime_accuracy=self.runtime_acc,
            data=c.data.describe() if c.data is not None else None,
            recovery=self.recovery_d,
            precision=publish_mod.precision_report(self.choice, self.final_d, c.quantizer),
        )
        native = self.native_d["path"] if self.native_d else None
        publish_mod.publish_outputs(self.run, rep, self.target.onnx_path("model"), native)
        return CompressResult(self.pruned, self.plan, rep, self.run.out)


def _config(loaded: LoadedModel, s: Settings) -> dict[str, Any]:
    """What the stage results depend on: a re-run with a different config starts afresh."""
    return {
        "model_sha256": rundir.weights_sha256(loaded.model),
        "input_shape": list(loaded.input_shape),
        "settings": dataclasses.asdict(s),
    }


def _learned_depth(depth: str) -> str:
    """The depth a learned method's preparation is given: `auto` decides after it, in the search."""
    return "off" if depth == "auto" else depth


def _prunes_nothing(plan: Plan) -> bool:
    """Every unit of every group kept and no block removed: the model as it was, nothing to recover."""
    return not plan.removed_blocks and all(len(g.keep) == g.size for g in plan.groups.values())
