"""The stages that train, beside the pipeline that orders them (compress.py): a method's preparation
of the model (e.g. sparsity training, `prepared`) and the recovery after pruning (`recovered`),
each keeping its weights in the run directory so a resumed run does not train again."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch

from edgeprune.pipeline import distributed
from edgeprune.pipeline.data import DataBundle
from edgeprune.pipeline.prune import space as space_mod
from edgeprune.pipeline.prune.methods import Goal, Importance
from edgeprune.pipeline.recovery import Recovery, TrainConfig, optimizer_for
from edgeprune.pipeline.rundir import RunDir
from edgeprune.pipeline.settings import Settings
from edgeprune.pipeline.stages import Progress


def prepared(
    method: Importance,
    model: torch.nn.Module,
    space: space_mod.PruningSpace,
    inputs: tuple[torch.Tensor, ...],
    data: DataBundle | None,
    goal: Goal,
    run: RunDir,
    stage: Callable[..., dict[str, Any]],
) -> torch.nn.Module:
    """The method's prepared copy of the model (e.g. sparsity-trained), its weights kept in the run
    dir and what else it learned (gates, searched widths) in the stage's JSON."""
    weights = run.path("prepared_state.pt")
    prepared = copy.deepcopy(model)

    def prepare() -> dict[str, Any]:
        t0 = time.perf_counter()
        trained = method.prepare(prepared, space, inputs, data, goal)
        torch.save(trained.state_dict(), weights)
        return {"method": method.name, "seconds": round(time.perf_counter() - t0, 2), "state": method.state()}

    result = stage("prepare", prepare)
    method.load_state(result["state"])
    prepared = method.prepared_architecture(prepared)
    prepared.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return prepared.eval()


def recovered(
    recovery: Recovery,
    pruned: torch.nn.Module,
    teacher: torch.nn.Module,
    data: DataBundle,
    s: Settings,
    metric: Any,
    run: RunDir,
    ctx: distributed.DistContext,
    stage: Callable[..., dict[str, Any]],
    log: Progress,
) -> dict[str, Any]:
    """Train the pruned model in place (every rank under torchrun); its weights persist in the run dir.
    The weights kept are the best epoch's on the held-out metric, the pruned ones included (trainer.py:
    a recovery that makes the model worse is not published), with an optimiser chosen for the
    architecture and the recovery's loss (`optimizer_for`)."""
    choice = optimizer_for(pruned, recovery, s.lr, recovery.scale_free_loss(teacher, data))
    config = TrainConfig.budget(
        s.epochs,
        s.steps,
        lr=choice.lr,
        optimizer=choice.optimizer,
        weight_decay=choice.weight_decay,
        keep_best=True,
    )
    weights = run.path("recovered_state.pt")

    def fit() -> dict[str, Any]:
        t0 = time.perf_counter()
        result = recovery.fit(pruned, teacher, data, config, metric, run.path("recover_checkpoint.pt"), log)
        if ctx.is_rank0:
            torch.save(pruned.state_dict(), weights)
        return {
            "method": recovery.name,
            "config": dataclasses.asdict(config),
            "history": result.history,
            "final_metric": result.final_metric,
            "kept": result.kept,
            "optimizer_why": choice.why,
            "seconds": round(time.perf_counter() - t0, 2),
            "processes": ctx.world_size,
        }

    done = distributed.rank0_then_broadcast(ctx, lambda: run.done("recover"))
    if done:
        pruned.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return stage("recover", fit, everywhere=True)
