"""Export, verify and time a model on the target runtime — the one way edgeprune measures.

The baseline, every search candidate and the final model all go through `TargetMeasurer`, so their
numbers come from the same exporter, the same runtime settings and the same protocol
(docs/ARCHITECTURE.md, "Measuring"): verified outputs before timing, warm-up, many repeats, median and p90.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.errors import EdgepruneError
from edgeprune.exporters import OnnxExporter, get_exporter
from edgeprune.exporters.base import Artifact, Exporter
from edgeprune.pipeline.decision import MIN_CHUNK, ROUNDS, Decision, decide
from edgeprune.runtime_bench import LatencyStats, Runtime
from edgeprune.runtime_bench.base import interleave

if TYPE_CHECKING:
    from edgeprune.pipeline.recovery.evaluate import Metric


@dataclasses.dataclass
class Measurement:
    """A loaded, verified artifact and (once timed) its latency statistics."""

    stats: LatencyStats | None
    max_abs_diff: float
    artifact: Artifact
    session: Any = dataclasses.field(default=None, repr=False)


#: the longest one measurement (warm-up + timed runs) may take: a --repeats that would take longer
#: at the model's speed is refused before the first measurement, instead of hanging it
MAX_MEASURE_S = 600.0


def check_time_bound(runtime: Runtime, session: Any, inputs: Sequence[np.ndarray], warmup: int, repeats: int) -> None:
    """Refuse --warmup/--repeats that would keep one measurement of this model running past
    `MAX_MEASURE_S`, judged from three timed runs."""
    probe = runtime.measure(session, inputs, 1, 3)
    seconds = probe.median / 1e3 * (warmup + repeats)
    if seconds > MAX_MEASURE_S:
        fits = max(1, int(MAX_MEASURE_S * 1e3 / probe.median) - warmup)
        raise EdgepruneError(
            f"--warmup {warmup} + --repeats {repeats} at {probe.median:.3g} ms per run would take about "
            f"{seconds / 60:.1f} min per measurement, over the "
            f"{MAX_MEASURE_S / 60:g} min bound; use --repeats {fits} or fewer"
        )


class TargetMeasurer:
    #: the precision of the models it measures (a subclass quantizes them)
    precision = "fp32"

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
        self.native = self.native_exporter()
        #: the lowest median any decision timed the reference (the baseline) at: the host's fast
        #: state, in which a final verdict against the search's is judged (final.py)
        self.fastest_reference: float | None = None

    def native_exporter(self) -> Exporter | None:
        """The exporter of the runtime's own file: a runtime that does not load ONNX (eager PyTorch,
        ExecuTorch) gets its own file too; the verified ONNX stays what reports describe and what
        compress publishes. None: the ONNX file is what the runtime loads."""
        rt = self.runtime
        return None if rt.artifact_format == "onnx" else get_exporter(rt.artifact_format, **rt.exporter_options())

    def export(self, model: nn.Module, path: Path) -> tuple[Artifact, float]:
        """Export and verify against PyTorch; a mismatch over tolerance raises."""
        artifact = self.exporter.export(model, self.example_inputs, path)
        diff = self.exporter.check(artifact, model, self.example_inputs)
        return artifact, diff

    def measure(self, model: nn.Module, tag: str, check_time: bool = False) -> Measurement:
        """Export, verify and time `model`; `check_time` first refuses repeats that would take too long."""
        m = self.prepare(model, tag)
        if check_time:
            check_time_bound(self.runtime, m.session, self.inputs_np, self.warmup, self.repeats)
        return self.time(m)

    def prepare(self, model: nn.Module, tag: str) -> Measurement:
        """Export `model`, load it on the target and check the target computes what PyTorch does
        (the exporter checked the file on its reference backend; a runtime can still differ: its
        own kernels, fusions, precision). Over the runtime's tolerance raises: a latency of a model
        that computes something else does not count."""
        _artifact, _ = self.export(model, self.onnx_path(tag))
        if self.native is not None:
            self.native.export(model, self.example_inputs, self.target_path(tag))
        m = self.load(tag)
        diff = check_outputs(
            self.runtime, self.runtime.run(m.session, self.inputs_np), modelrun.run(model, self.example_inputs)
        )
        return dataclasses.replace(m, max_abs_diff=diff)

    def onnx_path(self, tag: str) -> Path:
        """The ONNX file of `tag`: what reports describe and compress publishes."""
        return self.work_dir / f"{tag}.onnx"

    def target_path(self, tag: str) -> Path:
        """The file the runtime loads for `tag`: the ONNX export, or the runtime's own format."""
        return self.work_dir / f"{tag}.{self.native.suffix}" if self.native else self.onnx_path(tag)

    def load(self, tag: str) -> Measurement:
        """Load the already exported (and verified) `tag` on the runtime."""
        return Measurement(
            None, float("nan"), Artifact(self.onnx_path(tag), "onnx"), self.runtime.load(str(self.target_path(tag)))
        )

    def time(self, m: Measurement) -> Measurement:
        """Time a loaded model; runs pool with any earlier ones (a candidate at the budget's edge)."""
        more = self.runtime.measure(m.session, self.inputs_np, self.warmup, self.repeats)
        return dataclasses.replace(m, stats=more if m.stats is None else m.stats.merged(more))

    def runtime_accuracy(
        self, m: Measurement, model: nn.Module, loader: Iterable[Any], metric_name: str, metric: Metric
    ) -> dict[str, Any]:
        """The metric of the loaded model *on the runtime* next to PyTorch's, over every batch of
        `loader` (the validation split), fed in slices of the export's batch size: the accuracy
        effect of int8 or a reduced-precision runtime (bf16, fp16), which an output difference on a
        few inputs does not tell."""
        on_runtime = RuntimeModel(self.runtime, m.session, self.example_inputs[0].shape[0])
        runtime_value = metric(on_runtime, loader)
        if on_runtime.samples == 0:
            raise EdgepruneError("the validation data is empty; nothing to evaluate the runtime's accuracy on")
        pytorch_value = metric(model, loader)
        return {
            "metric": metric_name,
            "images": on_runtime.samples,
            "pytorch": pytorch_value,
            "runtime": runtime_value,
            "delta": runtime_value - pytorch_value,
        }

    def decide(
        self,
        candidate: Measurement,
        threshold: float,
        reference: Measurement | None = None,
        relative: bool = True,
        statistic: str = "median",
        give_up: float | None = None,
        fast_reference: float | None = None,
    ) -> tuple[Decision, Measurement, Measurement | None]:
        """Over or under `threshold`, timed in rounds interleaved with `reference` until a confidence
        interval decides (decision.py; `give_up` and `fast_reference` as there); each measurement
        comes back with its pooled runs."""
        d, stats, ref_stats = decide(
            self.runtime,
            candidate.session,
            self.inputs_np,
            threshold,
            None if reference is None else reference.session,
            relative,
            statistic,
            self.warmup,
            chunk=max(MIN_CHUNK, -(-self.repeats // ROUNDS)),
            give_up=give_up,
            fast_reference=fast_reference,
        )
        ref = None if reference is None or ref_stats is None else dataclasses.replace(reference, stats=ref_stats)
        if ref_stats is not None:
            fastest = self.fastest_reference
            self.fastest_reference = ref_stats.median if fastest is None else min(fastest, ref_stats.median)
        return d, dataclasses.replace(candidate, stats=stats), ref

    def interleaved(self, measurements: Sequence[Measurement], rounds: int = 10) -> list[LatencyStats]:
        """Time several loaded models alternately (A B A B ...), the protocol for comparing them."""
        sessions = [m.session for m in measurements]
        return interleave(self.runtime, sessions, [self.inputs_np] * len(sessions), self.warmup, self.repeats, rounds)


def check_outputs(runtime: Runtime, got: Sequence[np.ndarray], expected: Sequence[torch.Tensor]) -> float:
    """Max |runtime - PyTorch| over all outputs; raises when over the runtime's atol + rtol x max|output|."""
    if len(got) != len(expected):
        raise EdgepruneError(
            f"{runtime.name} returned {len(got)} outputs, PyTorch {len(expected)}; the exported graph is wrong"
        )
    diff = scale = 0.0
    for g, e in zip(got, expected):
        ref = e.detach().float().numpy()
        if np.shape(g) != ref.shape:
            raise EdgepruneError(
                f"{runtime.name} output shape {np.shape(g)} differs from "
                f"PyTorch's {ref.shape}; the exported graph is wrong"
            )
        diff = max(diff, float(np.max(np.abs(np.asarray(g, dtype=np.float64) - ref))) if ref.size else 0.0)
        scale = max(scale, float(np.max(np.abs(ref))) if ref.size else 0.0)
    tol = runtime.atol + runtime.rtol * scale
    if not diff <= tol:  # `not <=` so a NaN difference fails too
        raise EdgepruneError(
            f"{runtime.name} output differs from PyTorch by {diff:.3g} (max abs), over its tolerance {tol:.3g} "
            f"(atol {runtime.atol:g} + rtol {runtime.rtol:g} x max|output| {scale:.3g}); its latency would not count"
        )
    return diff


class RuntimeModel(nn.Module):
    """A loaded model on a runtime, called like the PyTorch module it was exported from: a batch
    is run in slices of the export's batch size (the last one padded by repeating its final
    sample) and the outputs come back as tensors, so a metric written for nn.Modules (top-1,
    `--metric`) measures the runtime itself. `samples` counts the inputs it has seen."""

    def __init__(self, runtime: Runtime, session: Any, batch: int) -> None:
        super().__init__()
        self.runtime, self.session, self.batch = runtime, session, batch
        self.samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(x), self.batch):
            chunk = x[start : start + self.batch].detach().cpu()
            real = len(chunk)
            if real < self.batch:
                chunk = torch.cat([chunk, chunk[-1:].expand(self.batch - real, *chunk.shape[1:])])
            parts.append([o[:real] for o in self.runtime.run(self.session, [chunk.numpy()])])
        self.samples += len(x)
        outs = tuple(torch.from_numpy(np.concatenate([p[i] for p in parts])) for i in range(len(parts[0])))
        return outs[0] if len(outs) == 1 else outs


#: the least time one measurement should spend in its timed loop: sub-millisecond models need
#: hundreds of repeats before their median stops moving on this noisy machine
MIN_TIMED_S = 0.5


def repeats_for(median_ms: float, repeats: int) -> int:
    """Repeats for a model whose median is `median_ms`: at least `repeats`, enough to spend MIN_TIMED_S timing it."""
    return int(min(2000, max(repeats, np.ceil(MIN_TIMED_S * 1e3 / max(median_ms, 1e-3)))))
