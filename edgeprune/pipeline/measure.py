"""Export, verify and time a model on the target runtime — the one way edgeprune measures.

The baseline, every search candidate and the final model all go through `TargetMeasurer`, so their
numbers come from the same exporter, the same runtime settings and the same protocol
(../shared/BENCHMARKING.md): verified outputs before timing, warm-up, many repeats, median and p90.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from edgeprune.exporters import OnnxExporter
from edgeprune.exporters.base import Artifact
from edgeprune.runtime_bench import LatencyStats, Runtime
from edgeprune.runtime_bench.base import interleave


@dataclasses.dataclass
class Measurement:
    """A loaded, verified artifact and (once timed) its latency statistics."""

    stats: LatencyStats | None
    max_abs_diff: float
    artifact: Artifact
    session: Any = dataclasses.field(default=None, repr=False)


class TargetMeasurer:
    def __init__(
        self,
        runtime: Runtime,
        example_inputs: Sequence[torch.Tensor],
        work_dir: Path,
        warmup: int = 10,
        repeats: int = 50,
        exporter: OnnxExporter | None = None,
    ) -> None:
        self.runtime = runtime
        self.example_inputs = tuple(example_inputs)
        self.inputs_np = [t.detach().cpu().numpy() for t in self.example_inputs]
        self.work_dir = Path(work_dir)
        self.warmup = warmup
        self.repeats = repeats
        self.exporter = exporter or OnnxExporter()

    def export(self, model: nn.Module, path: Path) -> tuple[Artifact, float]:
        """Export and verify against PyTorch; a mismatch over tolerance raises."""
        artifact = self.exporter.export(model, self.example_inputs, path)
        diff = self.exporter.check(artifact, model, self.example_inputs)
        return artifact, diff

    def measure(self, model: nn.Module, tag: str) -> Measurement:
        artifact, diff = self.export(model, self.work_dir / f"{tag}.onnx")
        return self.measure_artifact(artifact, diff)

    def load(self, artifact: Artifact, max_abs_diff: float = float("nan")) -> Measurement:
        return Measurement(None, max_abs_diff, artifact, self.runtime.load(str(artifact.path)))

    def measure_artifact(self, artifact: Artifact, max_abs_diff: float = float("nan")) -> Measurement:
        return self.time(self.load(artifact, max_abs_diff))

    def time(self, m: Measurement) -> Measurement:
        """Time a loaded model; runs pool with any earlier ones (a candidate at the budget's edge)."""
        more = self.runtime.measure(m.session, self.inputs_np, self.warmup, self.repeats)
        return dataclasses.replace(m, stats=more if m.stats is None else m.stats.merged(more))

    def interleaved(self, measurements: Sequence[Measurement], rounds: int = 10) -> list[LatencyStats]:
        """Time several loaded models alternately (A B A B ...), the protocol for comparing them."""
        sessions = [m.session for m in measurements]
        return interleave(self.runtime, sessions, [self.inputs_np] * len(sessions), self.warmup, self.repeats, rounds)
