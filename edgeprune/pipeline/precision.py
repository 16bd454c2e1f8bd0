"""Precision in the same budget: int8 models measured on the target, and the choice between int8
and float32 (`--precision fp32|int8|auto`).

`QuantizedMeasurer` is a `TargetMeasurer` whose models run in int8: each is exported to ONNX
(checked against PyTorch like every export), quantized by the runtime's backend
(edgeprune/quantize/) with activation ranges calibrated on training images, loaded on the target
and verified there against PyTorch float32 on validation images (`check_int8`, within
`INT8_TOLERANCE`) before it is timed. A search only sees an `Objective`, so any search's candidates
go through it unchanged: precision is decided around the search, not inside it.

`choose` is the policy: int8 of the unpruned model first (when it meets the budget, nothing is
pruned). Under `auto` its metric is measured on the runtime over the validation split beside the
float32 model's in PyTorch, and int8 is not chosen at all when it loses more than
`INT8_MAX_DROP` (or --max-accuracy-drop) of it: latency alone chose a YOLOv8n's int8 `model.onnx`
whose mAP50-95 was 0.000. Else, under `auto`, the widths are searched with int8 candidates and with float32 ones and
the plan that prunes least (keeps the most FLOPs) wins, float32 on a tie; the float32 search runs
first, and the int8 one only when int8 of its plan leaves room under the budget (`INT8_ROOM`). At a loose budget int8
alone often fits; at a tight one its fixed costs (quantize/dequantize at the graph's edges, kernels
that do not shrink with the width) can leave float32 pruning the only way there, which is why both
are searched rather than assumed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.measure import Measurement, RuntimeModel, TargetMeasurer
from edgeprune.pipeline.search.base import candidates_measured
from edgeprune.quantize import Quantizer
from edgeprune.runtime_bench import Runtime

#: training images the int8 activation ranges are calibrated on ("a few hundred", as ONNX Runtime
#: and NNCF advise; 16 images gave a 5x larger output error on the CIFAR ResNet-20)
CALIBRATION_IMAGES = 256
#: validation images every int8 model is checked on against PyTorch float32
CHECK_IMAGES = 64
#: the int8 tolerance: ||int8 on the runtime - PyTorch float32||_2 / ||PyTorch float32||_2 over the
#: outputs of the check images. Measured on the trained CIFAR ResNet-20: 0.02 (ORT, 256 calibration
#: images), 0.12 (NNCF on OpenVINO), 0.33 when calibrated on random noise (top-1 -2.6 points)
INT8_TOLERANCE = 0.2
#: under `auto`, the most of the metric (top-1, agreement or fidelity, absolute) int8 of the unpruned
#: model may lose on the runtime against PyTorch float32 and still be chosen: two points of top-1
#: (the trained CIFAR ResNet-20 lost 0.2 in int8 on ort-cpu; a classifier's agreement with itself in
#: int8 is typically 0.98-0.99), where a detector with dead class scores loses over 1.0 of fidelity
INT8_MAX_DROP = 0.02
#: under `auto`, int8 widths are searched only when int8 of the float32 search's plan measures under
#: this fraction of the budget: above it, an int8 plan could keep hardly more than the float32 one
#: (and a tie goes to float32), so a second search (as long as the first) would be wasted
INT8_ROOM = 0.9

Log = Callable[[str], None]


class QuantizedMeasurer(TargetMeasurer):
    """Measures int8 models: export, quantize, verify on the target against PyTorch, time.

    Its files sit beside the float32 measurer's in the same work folder under their own names
    (``TAG.int8.onnx``, quantized from ``TAG.int8-source.onnx``), so both can measure in one run."""

    precision = "int8"

    def __init__(
        self, base: TargetMeasurer, quantizer: Quantizer, calibration: torch.Tensor, check_images: torch.Tensor
    ) -> None:
        super().__init__(base.runtime, base.example_inputs, base.work_dir, base.warmup, base.repeats, base.exporter)
        self.quantizer = quantizer
        self.batch = int(self.example_inputs[0].shape[0])
        whole = len(calibration) - len(calibration) % self.batch
        self.feeds = [[calibration[i : i + self.batch].numpy()] for i in range(0, whole, self.batch)]
        if not self.feeds:
            raise EdgepruneError(
                f"--data gave {len(calibration)} training images; int8 calibration needs at least the export's "
                f"batch of {self.batch} (a few hundred is right); pass more data or use --precision fp32"
            )
        self.check_images = check_images

    def onnx_path(self, tag: str) -> Path:
        return self.work_dir / f"{tag}.int8.onnx"

    def prepare(self, model: nn.Module, tag: str) -> Measurement:
        """Export `model`, quantize it, load the int8 file on the target and verify it there."""
        source, _ = self.export(model, self.work_dir / f"{tag}.int8-source.onnx")
        how = self.quantizer.quantize(source.path, self.feeds, self.onnx_path(tag))
        m = self.load(tag)
        check = check_int8(self.runtime, m.session, model, self.check_images, self.batch)
        meta = source.meta | {"precision": "int8", "quantization": how, "int8_check": check}
        return dataclasses.replace(
            m, max_abs_diff=check["max_abs_diff"], artifact=dataclasses.replace(m.artifact, meta=meta)
        )


def check_int8(runtime: Runtime, session: Any, model: nn.Module, images: torch.Tensor, batch: int) -> dict[str, Any]:
    """The int8 model's outputs on the runtime against PyTorch float32's on `images`; over
    `INT8_TOLERANCE` (relative L2 error) raises: an int8 model that computes something else has
    no latency worth counting. Random inputs would not do here: calibrated ranges clip them."""
    got = RuntimeModel(runtime, session, batch)(images)
    got_list = [got] if isinstance(got, torch.Tensor) else list(got)
    want = modelrun.run(model, (images,))
    if [tuple(g.shape) for g in got_list] != [tuple(w.shape) for w in want]:
        raise EdgepruneError(
            f"{runtime.name}: the int8 model's outputs have shapes {[tuple(g.shape) for g in got_list]}, "
            f"PyTorch's {[tuple(w.shape) for w in want]}; the quantized graph is wrong"
        )
    err = sum(float(torch.sum((g.double() - w.double()) ** 2)) for g, w in zip(got_list, want))
    ref = sum(float(torch.sum(w.double() ** 2)) for w in want)
    rel = math.sqrt(err / ref) if ref > 0 else (0.0 if err == 0 else math.inf)
    diff = max(float(torch.max(torch.abs(g.double() - w.double()))) for g, w in zip(got_list, want))
    if not rel <= INT8_TOLERANCE:  # `not <=` so a NaN fails too
        raise EdgepruneError(
            f"{runtime.name}: the int8 model differs from PyTorch float32 by {rel:.3f} (relative L2 error over "
            f"{len(images)} validation images), over the int8 tolerance {INT8_TOLERANCE:g}; its latency would not "
            "count: use --precision fp32 (int8 cannot represent this model's activations well)"
        )
    return {
        "rel_l2": rel,
        "max_abs_diff": diff,
        "images": len(images),
        "tolerance": INT8_TOLERANCE,
        "top1_agreement": _agreement(got_list[0], want[0]),
    }


def _agreement(got: torch.Tensor, want: torch.Tensor) -> float | None:
    """The share of check images whose arg-max class agrees (classifier outputs only)."""
    if got.ndim != 2:
        return None
    return float((got.argmax(1) == want.argmax(1)).double().mean())


def check_images(val: Any, n: int = CHECK_IMAGES) -> torch.Tensor:
    """The first `n` inputs of the validation split: what every int8 model is verified on."""
    taken, have = [], 0
    for x, _ in val:
        taken.append(x)
        have += len(x)
        if have >= n:
            break
    if not taken:
        raise EdgepruneError("the validation data is empty; int8 models are verified on validation images")
    return torch.cat(taken)[:n]


def refuse_int8_inputs(example_inputs: tuple[torch.Tensor, ...]) -> None:
    """int8 is calibrated from --data, which gives one input tensor per sample."""
    if len(example_inputs) != 1:
        raise EdgepruneError(
            f"int8 calibration feeds one input tensor from --data and this model takes {len(example_inputs)}; "
            "use --precision fp32"
        )


@dataclasses.dataclass
class Policy:
    """What `choose` needs from the run: how to probe int8 of the unpruned model and how to search
    at a precision (both resumable stages of the run), and how many FLOPs a searched plan keeps."""

    mode: str  # fp32 | int8 | auto
    fp32_why: str  # why the mode is fp32, when it is (--precision fp32, or no --data)
    unavailable: str | None  # why int8 cannot run here, or None
    counted: bool  # a FLOPs/params budget: counted on the PyTorch model, the same at any precision
    baseline_within: bool  # the float32 model already meets the budget
    probe: Callable[[], dict[str, Any]]  # int8 of the unpruned model against the budget
    #: ("fp32" | "int8", earlier readings at that precision: {"plan", "value", "within"}) -> the
    #: search's result (EdgepruneError when none fits)
    search: Callable[[str, list[dict[str, Any]]], dict[str, Any]]
    flops: Callable[[dict[str, Any]], float]  # a search result's plan -> FLOPs it keeps
    baseline_flops: float
    baseline_value: float  # the float32 baseline's figure (what the probe's value compares with)
    #: int8 of the unpruned model's metric on the runtime beside PyTorch float32's (runtime_accuracy's
    #: dict); None where nothing measures it
    int8_metric: Callable[[], dict[str, Any]] | None = None
    max_drop: float = INT8_MAX_DROP  # the most of the metric int8 may lose under auto
    higher_is_better: bool = True  # the metric's direction
    #: int8 of a float32 search's plan against the budget ({"value", "ratio", "within"}, as `probe`):
    #: whether an int8 search has room to keep more (None: always search both)
    int8_of: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    budget_value: float = math.inf  # the resolved budget, in the baseline's unit


def reading(plan: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """A plan's int8 reading, decided before the int8 search, that it starts its bracket from: the
    unpruned model (over the budget, or there would be no search) and, under `auto`, the float32
    plan (under it, or int8 would not have been searched). A search from the float32 baseline's
    reading alone aimed its first int8 candidate at half the FLOPs where int8 of the unpruned model
    read 0.53 of the baseline against a 0.5 budget, and took 8 candidates (YOLOv8n at 640 px: 354 s)."""
    return {"plan": plan, "value": measured["value"], "within": measured["within"]}


def choose(p: Policy, log: Log) -> dict[str, Any]:
    """The precision and the search result to prune with, and why: {"precision", "why", "search",
    "int8_unpruned", "tried"}. `tried` holds each searched precision's outcome for the report."""
    tried: dict[str, Any] = {}
    room_check: dict[str, Any] = {}  # int8 of the float32 plan, where it decided whether to search int8

    def done(precision: str, why: str, search: dict[str, Any], probe: dict[str, Any] | None = None) -> dict[str, Any]:
        log(f"  precision: {precision} ({why})")
        return {
            "mode": p.mode,
            "precision": precision,
            "why": why,
            "search": search,
            "int8_unpruned": probe,
            "tried": tried,
            "int8_of_fp32_plan": room_check or None,
        }

    def searched(precision: str, tolerant: bool = False, prior: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The search at `precision`, started from the `prior` readings of plans at that precision;
        with `tolerant`, a search that finds no plan within the budget is an outcome to compare
        ({"error": why}), not the run's end."""
        try:
            result = p.search(precision, prior or [])
        except EdgepruneError as err:
            if not tolerant:
                raise
            tried[precision] = {"error": str(err)}
            return {"error": str(err)}
        tried[precision] = {
            "flops_ratio": p.flops(result) / p.baseline_flops,
            "stop_reason": result["stop_reason"],
            "candidates_measured": candidates_measured(result["steps"]),
        }
        return result

    if p.mode == "fp32":
        return done("fp32", p.fp32_why, searched("fp32"))
    if p.unavailable is not None:  # only `auto` gets here: an explicit int8 was refused before any work
        return done("fp32", f"{p.unavailable}; float32", searched("fp32"))
    if p.counted:
        why = "a FLOPs/params budget is counted on the model, and int8 does not change the count"
        return done(
            p.mode if p.mode == "int8" else "fp32",
            why + ("; quantized after pruning as asked" if p.mode == "int8" else ": float32"),
            searched("fp32"),
        )
    if p.baseline_within:
        if p.mode == "auto":
            return done(
                "fp32", "the float32 model already meets the budget: nothing to prune or quantize", searched("fp32")
            )
        return done("int8", "the float32 model already meets the budget; quantized as asked", searched("fp32"))
    try:
        probe = p.probe()
    except EdgepruneError as err:  # quantization or its check failed on this model
        if p.mode == "int8":
            raise
        tried["int8"] = {"error": str(err)}
        return done("fp32", f"int8 of the unpruned model failed: {err}; float32 pruning", searched("fp32"))
    ratio = probe["value"] / p.baseline_value
    if p.mode == "auto" and p.int8_metric is not None:
        acc = p.int8_metric()
        probe = probe | {"metric": acc}
        drop = (acc["pytorch"] - acc["runtime"]) * (1.0 if p.higher_is_better else -1.0)
        if not drop <= p.max_drop:  # `not <=`: a NaN metric is a loss too
            return done(
                "fp32",
                f"int8 of the unpruned model loses {drop:.4f} of {acc['metric']} on the runtime ({acc['runtime']:.4f} "
                f"against {acc['pytorch']:.4f} in PyTorch float32 over {acc['images']} validation inputs), more than "
                f"the {p.max_drop:g} allowed (--max-accuracy-drop): float32 pruning",
                searched("fp32"),
                probe,
            )
    if probe["within"]:
        return done(
            "int8",
            f"int8 of the unpruned model measured {ratio:.3f} of the float32 baseline: within the budget, no pruning",
            {"plan": probe["plan"], "steps": [], "stop_reason": "int8 of the unpruned model within budget"},
            probe,
        )
    if p.mode == "int8":
        return done(
            "int8",
            f"--precision int8; int8 of the unpruned model measured {ratio:.3f} of the float32 baseline, "
            "over the budget: widths searched with int8 candidates",
            searched("int8", prior=[reading(probe["plan"], probe)]),
            probe,
        )
    if probe["value"] >= p.baseline_value:
        return done(
            "fp32",
            f"int8 of the unpruned model is not faster than float32 on this runtime ({ratio:.3f} of its "
            "latency): float32 pruning",
            searched("fp32"),
            probe,
        )
    fp32 = searched("fp32", tolerant=True)
    if "error" not in fp32 and p.int8_of is not None:
        same = p.int8_of(fp32)
        room = same["value"] / p.budget_value
        room_check.update(same, room=room, searched_int8=room < INT8_ROOM)
        if not room < INT8_ROOM:
            return done(
                "fp32",
                f"int8 of the float32 plan measured {same['value'] / p.baseline_value:.3f} of the baseline, "
                f"{room:.2f} of the budget: no room for an int8 plan that prunes less, so int8 was not searched; "
                "float32 pruning",
                fp32,
                probe,
            )
        log(
            f"  int8 of the float32 plan measured {room:.2f} of the budget: room for an int8 plan that prunes less; "
            "searching the widths with int8 candidates too"
        )
    prior = [reading(probe["plan"], probe)] + ([reading(fp32["plan"], room_check)] if room_check else [])
    int8 = searched("int8", tolerant=True, prior=prior)
    if "error" in int8 and "error" in fp32:
        raise EdgepruneError(
            f"no plan met the budget at either precision: int8: {int8['error']}; float32: {fp32['error']}"
        )
    if "error" in int8:
        return done(
            "fp32",
            f"int8 of the unpruned model measured {ratio:.3f} of the float32 baseline, and int8 candidates "
            f"could not meet the budget ({int8['error']}): float32 pruning",
            fp32,
            probe,
        )
    if "error" in fp32:
        return done("int8", f"float32 pruning could not meet the budget ({fp32['error']}); int8 did", int8, probe)
    kept8, kept32 = tried["int8"]["flops_ratio"], tried["fp32"]["flops_ratio"]
    if kept8 > kept32:
        return done(
            "int8",
            f"int8 keeps {kept8:.1%} of the FLOPs within the budget, float32 {kept32:.1%}: the least pruning",
            int8,
            probe,
        )
    return done(
        "fp32",
        f"float32 keeps {kept32:.1%} of the FLOPs within the budget, int8 {kept8:.1%}: the least pruning, "
        "without int8's own error",
        fp32,
        probe,
    )
