"""Publishing: the pruned model in its ecosystem's own format (`native`), and every output published
together (`publish_outputs`, `RunDir.publish`), `report.json` last and recording the others' sha256.
The report is assembled by the pipeline's own last stage (`Pipeline.publish`) from what its stages
measured, passed here as values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune import atomic, ecosystems
from edgeprune.pipeline import report as report_mod
from edgeprune.pipeline.loading import LoadedModel
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.rundir import RunDir
from edgeprune.quantize import Quantizer


@dataclasses.dataclass
class CompressResult:
    """The figures of a finished run (the same as report.json), plus the pruned module."""

    model: torch.nn.Module
    plan: Plan | dict[str, Any]  # a decoder's plan is its shape and kept heads (pipeline/decoder/)
    report: dict[str, Any]
    out_dir: Path

    @property
    def baseline_ms(self) -> float:
        return self.report["baseline"]["latency_ms"]["median"]

    @property
    def final_ms(self) -> float:
        return self.report["final"]["latency_ms"]["median"]

    @property
    def speedup(self) -> float:
        return self.report["speedup"]

    @property
    def met(self) -> bool:
        return self.report["budget"]["met"]

    @property
    def flops_ratio(self) -> float:
        return self.report["final"]["flops"] / self.report["baseline"]["flops"]

    @property
    def accuracy(self) -> dict[str, Any] | None:
        return self.report.get("accuracy")

    @property
    def precision(self) -> str:
        """ "fp32" or "int8": what model.onnx computes in."""
        return self.report["precision"]["chosen"]


def native(
    loaded: LoadedModel, pruned: nn.Module, plan: Plan, run: RunDir, log: Callable[[str], None]
) -> dict[str, Any] | None:
    """The pruned model written in its ecosystem's own format (ecosystems/), where it has one."""
    door = ecosystems.ecosystem(loaded.ecosystem)
    if door is None or door.output is None:
        return None
    dest = run.path(door.output)
    if dest.is_dir():
        shutil.rmtree(dest)
    dest.unlink(missing_ok=True)
    written = door.save(pruned, loaded, plan, dest)
    log(f"  {door.name} format: {door.output} ({written.get('load', '')})")
    return {"path": door.output, "ecosystem": door.name} | written


#: the published files whose hashes report.json records, so a reader can tell they belong together
HASHED_OUTPUTS = ("model.onnx", "model.pt", "state_dict.pt", "plan.json")


def publish_outputs(run: RunDir, rep: dict[str, Any], onnx: Path, native: str | None) -> None:
    """Write the report (with the hashes of the files it describes) and publish the set together;
    `onnx` is the final model's ONNX file (the int8 one when int8 was chosen), `native` the name of
    the model in its ecosystem's format (a file or folder in the work dir), if any."""
    names = (*HASHED_OUTPUTS, *([native] if native else []), "report.md", "widths.svg", "report.json")
    files = {name: run.path(name) for name in names} | {"model.onnx": onnx}
    rep["outputs_sha256"] = {name: file_sha256(files[name]) for name in HASHED_OUTPUTS}
    atomic.write_text(run.path("report.md"), report_mod.markdown(rep))
    atomic.write_text(run.path("widths.svg"), report_mod.widths_svg(rep["groups"]))
    atomic.write_json(run.path("report.json"), rep)
    run.publish(files)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def precision_report(choice: dict[str, Any], final_d: dict[str, Any], quantizer: Quantizer | None) -> dict[str, Any]:
    """report.json's `precision`: what was chosen and why, what each precision reached, and for
    int8 how the final model was quantized and how close it came to PyTorch."""
    export = final_d["final"].get("export", {})
    return {
        "mode": choice["mode"],
        "chosen": choice["precision"],
        "why": choice["why"],
        "int8_unpruned": choice["int8_unpruned"]
        and {k: choice["int8_unpruned"][k] for k in ("value", "ratio", "within")},
        "searched": choice["tried"],
        "int8_of_fp32_plan": choice.get("int8_of_fp32_plan"),
        "quantization": export.get("quantization"),
        "int8_check": export.get("int8_check"),
        "quantizer": quantizer.settings() if quantizer is not None else None,
    }
