"""What the user gave, checked before anything is written: the runtime, the method, the recovery,
the `--unprunable` names, `--out`, the data against the model, the metric and the int8 backend.

`Settings` checked its own values when it was built; `Checked.of` turns the rest into the objects
the stages use, so a mistake is one line (exit 2) before `--out` exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from edgeprune import modelrun
from edgeprune.ecosystems.base import Ecosystem, ecosystem
from edgeprune.errors import EdgepruneError
from edgeprune.exporters import exporter_formats
from edgeprune.pipeline import distributed, rundir
from edgeprune.pipeline import precision as precision_mod
from edgeprune.pipeline.budget import Budget, parse_budget
from edgeprune.pipeline.data import DataBundle, ModelInputs, check_fits, load_data
from edgeprune.pipeline.loading import LoadedModel
from edgeprune.pipeline.methods import Importance, get_method
from edgeprune.pipeline.recovery import Recovery, get_recovery, load_metric
from edgeprune.pipeline.recovery.evaluate import Fidelity, Metric, is_class_logits
from edgeprune.pipeline.settings import Settings
from edgeprune.quantize import Quantizer, quantizer_for
from edgeprune.runtime_bench import Runtime, get_runtime


@dataclasses.dataclass
class Checked:
    """What the user gave, turned into the objects the stages use and checked before anything is
    written (`Settings` checked its own values when it was built): a typo in a layer name, a
    runtime missing here or data that does not fit the model is one line before --out exists."""

    budget: Budget
    runtime: Runtime
    method: Importance
    recovery: Recovery | None
    num_outputs: int
    data: DataBundle | None
    metric_name: str
    metric: Metric
    quantizer: Quantizer | None
    int8_unavailable: str | None  # why `auto` goes on without int8

    @classmethod
    def of(cls, loaded: LoadedModel, settings: Settings, out_dir: str | Path, ctx: distributed.DistContext) -> Checked:
        budget = parse_budget(settings.budget)
        runtime = get_runtime(settings.runtime, threads=settings.threads)
        if runtime.artifact_format != "onnx" and runtime.artifact_format not in exporter_formats():
            raise EdgepruneError(
                f"--runtime {settings.runtime} runs {runtime.artifact_format} models, which edgeprune makes of decoder "
                "language models only (a *ForCausalLM folder); use an ONNX runtime such as ort-cpu"
            )
        ok, why = runtime.available()
        if not ok:
            raise EdgepruneError(f"runtime {settings.runtime} cannot run here: {why}")
        method = get_method(settings.method, **settings.method_options)
        _check_layer_names(loaded.model, settings.unprunable)
        rundir.check_out(out_dir, [p for p in (loaded.source, settings.data) if p is not None])
        num_outputs = loaded.num_classes or int(modelrun.run(loaded.model, loaded.example_inputs)[0].shape[-1])
        door = ecosystem(loaded.ecosystem)
        data = None
        if settings.data is not None:
            data = load_data(
                door.data_source(settings.data) if door is not None else settings.data,
                settings.batch_size,
                seed=0,
                num_replicas=ctx.world_size,
                rank=ctx.rank,
                model=ModelInputs(loaded.example_inputs, loaded.input_names, loaded.preprocess),
            )
            check_fits(data, num_outputs, loaded.input_shape)  # before any training
        name = settings.recovery_for(data.labelled) if data is not None else settings.recovery
        recovery = None if name == "none" else get_recovery(name, **settings.recovery_options(name))
        metric_name, metric = _metric(settings, loaded, data, door)
        quantizer, int8_unavailable = _quantizer(settings, loaded.example_inputs)
        return cls(
            budget, runtime, method, recovery, num_outputs, data, metric_name, metric, quantizer, int8_unavailable
        )


def _metric(
    settings: Settings, loaded: LoadedModel, data: DataBundle | None, door: Ecosystem | None
) -> tuple[str, Metric]:
    """The model's library's own metric where it has one for --metric or --data (ultralytics' mAP);
    else --metric; else top-1 for a classifier with labels; else fidelity to the unpruned model
    (recovery/evaluate.py: top-1 agreement for class logits, R² of the outputs otherwise)."""
    own = door.metric(settings.metric, settings.data, loaded) if door is not None else None
    if own is not None:
        return own.name, own
    if settings.metric and ":" not in settings.metric:
        raise EdgepruneError(
            f"--metric {settings.metric}: no such metric for this model; name a function as module:function, or "
            "--metric ultralytics for an ultralytics checkpoint"
        )
    if settings.metric or data is None:
        return load_metric(settings.metric)
    first = modelrun.named_outputs(modelrun.run_raw(loaded.model, loaded.example_inputs))[0]
    if data.labelled and first[1].ndim == 2 and is_class_logits(*first):
        return load_metric(None)
    fidelity = Fidelity(loaded.model, loaded.example_inputs)
    return fidelity.name, fidelity


def _check_layer_names(model: torch.nn.Module, names: Sequence[str]) -> None:
    """--unprunable names must be layers of the model: a typo would otherwise be silently ignored."""
    known = {n for n, _ in model.named_modules() if n}
    unknown = [n for n in names if n not in known]
    if unknown:
        examples = ", ".join(n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))[
            :120
        ]
        raise EdgepruneError(
            f"--unprunable {','.join(unknown)}: no layer of that name in the model; "
            f"use module names as model.named_modules() gives them (e.g. {examples})"
        )


def _quantizer(settings: Settings, inputs: tuple[torch.Tensor, ...]) -> tuple[Quantizer | None, str | None]:
    """The int8 backend for the run, or why there is none. An explicit --precision int8 that
    cannot run is refused here, before anything is written; `auto` then goes on in float32."""
    if settings.precision_mode == "fp32":
        return None, None
    try:
        precision_mod.refuse_int8_inputs(inputs)
        return quantizer_for(settings.runtime), None
    except EdgepruneError as err:
        if settings.precision_mode == "int8":
            raise
        return None, str(err)
