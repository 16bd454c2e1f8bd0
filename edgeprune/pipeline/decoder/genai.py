"""The decode step measured on ONNX Runtime GenAI (`--runtime ort-genai`, runtime_bench/ort_genai.py).

Every model measured (the baseline, each probe and candidate, the published one) is written as a
folder like the user's (its tokenizer included: the builder loads it) and built by GenAI's own
model builder, float32 or int4 as the runtime says; that folder is loaded, its next-token logits
after a short prompt checked against PyTorch's, and its generated tokens timed at a cache of
`--context` tokens (a prompt that long appended first). The ONNX decode step is still exported and
checked for each (what compress publishes as model.onnx and the report describes), and the
published one is chained against PyTorch on ONNX Runtime as on every other runtime, beside GenAI's
own greedy continuation, which must equal transformers' `generate`.

A build takes seconds (the builder's process and its graph), so a search on this runtime costs
more per candidate than on ort-cpu.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.exporters import OnnxExporter
from edgeprune.pipeline.decoder import verify
from edgeprune.pipeline.decoder.shape import Shape
from edgeprune.pipeline.decoder.step import DecodeStep, Prefill, step_inputs, step_io
from edgeprune.pipeline.decoder.target import StepTarget, register
from edgeprune.pipeline.measure import Measurement, TargetMeasurer, check_outputs
from edgeprune.runtime_bench import Runtime, get_runtime
from edgeprune.runtime_bench.ort_genai import TOKENIZER_FILES, OrtGenaiRuntime, has_tokenizer

#: tokens of the prompt whose next-token logits every build is checked on against PyTorch
CHECK_TOKENS = 16
#: an int4 build is checked as an int8 model is (precision.INT8_TOLERANCE): the relative L2 error of
#: its next-token logits against PyTorch float32 at most this. A float32 build is held to the
#: runtime's atol/rtol (it read 8e-7 from PyTorch on a random 4-layer Llama); the int4 build of that
#: random model read 0.30, refused: random weights quantize far worse than trained ones
INT4_TOLERANCE = 0.2


def checked(runtime: OrtGenaiRuntime, got: list[np.ndarray], want: torch.Tensor) -> float:
    """The largest difference of a build's logits from PyTorch's; over its precision's tolerance raises."""
    if not runtime.reduced_precision:
        return check_outputs(runtime, got, [want])
    g, w = got[0].astype(np.float64), want.double().numpy()
    rel = float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30))
    if not rel <= INT4_TOLERANCE:
        raise EdgepruneError(
            f"{runtime.name}:{runtime.precision}: the build's next-token logits differ from PyTorch float32 by "
            f"{rel:.3f} (relative L2), over {INT4_TOLERANCE:g}; its latency would not count: use --runtime ort-genai "
            "(float32)"
        )
    return float(np.max(np.abs(g - w)))


class GenaiMeasurer(TargetMeasurer):
    """Decode steps of one shape, timed as GenAI's build of their model (module docstring)."""

    def __init__(self, target: GenaiTarget, shape: Shape) -> None:
        inputs = step_inputs(shape, target.head_dim, target.vocab, target.context)
        super().__init__(
            target.runtime, inputs, target.work, target.warmup, target.repeats, OnnxExporter(io=step_io(shape.layers))
        )
        self.builder = target.genai
        self.write = target.write
        self.inputs_np = [target.prompt(target.context).numpy()]  # the runtime's feed: the prompt the cache holds

    def native_exporter(self) -> None:
        return None  # the runtime's folder is built from the model's own folder, not exported (prepare)

    def target_path(self, tag: str) -> Path:
        return self.work_dir / f"{tag}.genai"

    def prepare(self, model: nn.Module, tag: str) -> Measurement:
        """The step exported and checked, its model written and built, the build checked against PyTorch."""
        assert isinstance(model, DecodeStep)
        self.export(model, self.onnx_path(tag))
        folder = self.work_dir / f"{tag}.hf"
        shutil.rmtree(folder, ignore_errors=True)
        self.write(model.model, folder)
        try:
            self.builder.build(folder, self.target_path(tag), self.work_dir / "genai_cache")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        m = self.load(tag)
        ids = torch.from_numpy(self.inputs_np[0][:, :CHECK_TOKENS])
        with torch.no_grad():
            want = model.model(input_ids=ids).logits[:, -1]
        diff = checked(self.builder, self.runtime.run(m.session, [ids.numpy()]), want)
        return dataclasses.replace(m, max_abs_diff=diff)


@register
@dataclasses.dataclass
class GenaiTarget(StepTarget):
    """ONNX Runtime GenAI's builder folder (module docstring)."""

    formats = ("genai",)
    spare_positions = 2  # the token the prompt's logits choose, and the one each timed call runs on

    @property
    def genai(self) -> OrtGenaiRuntime:
        assert isinstance(self.runtime, OrtGenaiRuntime)
        return self.runtime

    @classmethod
    def refuse(cls, runtime: Runtime, source: Path) -> str | None:
        if has_tokenizer(source):
            return None
        return (
            f"--runtime {runtime.name}: ONNX Runtime GenAI's builder loads the model's tokenizer, and {source} has "
            f"none ({', '.join(TOKENIZER_FILES)}); save the tokenizer into the folder (tokenizer.save_pretrained)"
        )

    def measurer(self, shape: Shape) -> TargetMeasurer:
        return GenaiMeasurer(self, shape)

    def prefill(self, model: nn.Module, layers: int, prompt_tokens: int, tag: str, step: Measurement) -> dict[str, Any]:
        """The prompt appended on `step`'s build; its ONNX prefill exported and checked beside it
        (published as on every runtime)."""
        ids = self.prompt(prompt_tokens)
        exporter = OnnxExporter()
        module = Prefill(model, layers).eval()
        exporter.check(exporter.export(module, (ids,), self.work / f"{tag}.onnx"), module, (ids,))
        stats = self.genai.prefill(step.session, ids[0].tolist(), self.warmup, max(10, self.repeats // 5))
        return stats.to_dict()

    def verify(self, model: nn.Module, layers: int, step: Measurement, prompt: torch.Tensor) -> dict[str, Any]:
        """The ONNX step chained on ONNX Runtime (ort-cpu) against PyTorch and `generate`, and GenAI's
        greedy continuation of the same prompt against `generate`'s tokens (equal in float32; an int4
        build's are recorded, its logits having been checked within INT4_TOLERANCE)."""
        onnx = get_runtime("ort-cpu", threads=self.runtime.threads)
        chain = verify.chained(model, layers, onnx, onnx.load(str(step.artifact.path)), prompt)
        tokens = self.genai.greedy(step.session, prompt[0].tolist(), chain["steps"])
        same = tokens == chain["generate_tokens"]
        if not same and not self.genai.reduced_precision:  # int4 may pick other tokens; its logits were checked
            raise EdgepruneError(
                f"ONNX Runtime GenAI's build of the published model continued the check prompt with {tokens}, "
                f"transformers' generate with {chain['generate_tokens']}; the build is wrong and its latency "
                "would not count"
            )
        return chain | {"genai_tokens": tokens, "genai_same_tokens": same}

    def outputs(self) -> dict[str, Path]:
        return {"genai_model": self.work / "model.genai"}

    def describe(self, output: str) -> str:
        return f"ONNX Runtime GenAI's {self.genai.precision} build of hf_model, as its og.Model loads it"
