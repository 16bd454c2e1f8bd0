"""Where a decoder's time per token is measured (`StepTarget`), chosen by the runtime's artifact
format: run.py asks it for the decode step's measurer, the prefill's time and the check of the
published step, and is the same for every runtime.

`StepTarget` itself is the ONNX way (any ONNX runtime, ort-cpu by default): the decode step
exported with its cache as inputs and outputs (step.py), timed as one call at a cache of
`context` tokens, and chained step after step against PyTorch and `generate` (verify.py). Another
way is one file subclassing it and registering its formats (genai.py: ONNX Runtime GenAI's
builder folder).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.exporters import OnnxExporter
from edgeprune.pipeline.decoder import verify
from edgeprune.pipeline.decoder.shape import Shape
from edgeprune.pipeline.decoder.step import Prefill, step_inputs, step_io
from edgeprune.pipeline.measure import Measurement, TargetMeasurer
from edgeprune.runtime_bench import Runtime


@dataclasses.dataclass
class StepTarget:
    """The decode step as an ONNX file with its cache as inputs (module docstring)."""

    formats: ClassVar[tuple[str, ...]] = ("onnx",)
    #: positions past the context a timed token needs (the step's own token; --context is capped so)
    spare_positions: ClassVar[int] = 1

    runtime: Runtime
    work: Path
    warmup: int
    repeats: int
    head_dim: int
    vocab: int
    context: int
    source: Path  # the user's folder
    #: writes a (cut) model as a folder like `source`, tokenizer included: for a target that builds
    #: its runtime's files from a folder (the door's CausalLmEcosystem.write_folder)
    write: Callable[[nn.Module, Path], Any]

    @classmethod
    def refuse(cls, runtime: Runtime, source: Path) -> str | None:
        """Why this target cannot measure the model in `source` on `runtime` (one line), or None."""
        return None

    def measurer(self, shape: Shape) -> TargetMeasurer:
        """Measures decode steps of `shape` (`prepare` takes a step.DecodeStep)."""
        inputs = step_inputs(shape, self.head_dim, self.vocab, self.context)
        return TargetMeasurer(
            self.runtime, inputs, self.work, self.warmup, self.repeats, OnnxExporter(io=step_io(shape.layers))
        )

    def prompt(self, prompt_tokens: int) -> torch.Tensor:
        """The prompt the time to the first token is measured on (seeded: every model gets the same)."""
        return torch.randint(0, self.vocab, (1, prompt_tokens), generator=torch.Generator().manual_seed(2))

    def prefill(self, model: nn.Module, layers: int, prompt_tokens: int, tag: str, step: Measurement) -> dict[str, Any]:
        """The prefill of `prompt_tokens` tokens timed on the target (its file `{tag}.onnx` is published)."""
        m = TargetMeasurer(
            self.runtime, (self.prompt(prompt_tokens),), self.work, self.warmup, max(10, self.repeats // 5)
        )
        timed = m.measure(Prefill(model, layers).eval(), tag)
        assert timed.stats is not None
        return timed.stats.to_dict()

    def verify(self, model: nn.Module, layers: int, step: Measurement, prompt: torch.Tensor) -> dict[str, Any]:
        """The published step chained over several tokens against PyTorch and `generate` (verify.py)."""
        return verify.chained(model, layers, self.runtime, step.session, prompt)

    def outputs(self) -> dict[str, Path]:
        """What the run publishes beside model.onnx and prefill.onnx (name in --out: path in work/)."""
        return {}

    def describe(self, output: str) -> str:
        """One phrase on what an `outputs` entry is, for the report and the closing line."""
        return output


TARGETS: dict[str, type[StepTarget]] = {}


def register(cls: type[StepTarget]) -> type[StepTarget]:
    for fmt in cls.formats:
        TARGETS[fmt] = cls
    return cls


register(StepTarget)


def target_class(runtime: Runtime, source: Path) -> type[StepTarget]:
    """The target for `runtime`'s artifact format; one line when a decoder cannot be measured there."""
    cls = TARGETS.get(runtime.artifact_format)
    if cls is None:
        raise EdgepruneError(
            f"--runtime {runtime.name}: a language model's decode step is measured as ONNX with its cache as inputs "
            "(ort-cpu and the other ONNX runtimes) or as ONNX Runtime GenAI's model (ort-genai); use one of those"
        )
    why = cls.refuse(runtime, source)
    if why is not None:
        raise EdgepruneError(why)
    return cls
