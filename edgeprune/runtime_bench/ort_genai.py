"""ONNX Runtime GenAI on the CPU (``ort-genai``, ``ort-genai:int4``): a decoder language model as
its own model builder writes it, timed one generated token at a time with a filled cache.

This is what small language models ship on at the edge (its fused GQA attention ran the exported
eager decode step's two shapes about twice as fast, bench/README.md "llm_decoder"), so a budget in
ms per token means most there. Its artifact is the builder's folder (`build`: an ONNX graph with the
cache inside the runtime, `genai_config.json`, the tokenizer), made from a `save_pretrained` folder,
float32 or int4 (`--runtime ort-genai:int4`, the builder's own MatMulNBits quantization).

A session keeps one generator with the prompt of `inputs` appended, so a run is one
`generate_next_token` at that context: the generator runs the model on the last token chosen, then
chooses the next (the first call after a prompt only chooses: it is made untimed). `measure` times
runs and rewinds the generator to the prompt every `SPAN` tokens (untimed), so the cache stays
within `SPAN` tokens of the context asked for (fewer where the model's context length ends sooner).
`run` is what is verified against PyTorch: the next-token logits after a prompt, on a fresh generator.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.runtime_bench.base import LatencyStats, Runtime, time_calls
from edgeprune.runtime_bench.registry import register

#: generated tokens between two rewinds to the prompt: the cache grows at most this far past it
SPAN = 16
#: files of a tokenizer the builder reads from the source folder (it loads one with AutoTokenizer)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclasses.dataclass
class GenaiSession:
    """A loaded builder folder and its generator, kept at the prompt last measured."""

    model: Any
    folder: Path
    context_length: int  # the most tokens a sequence may hold (genai_config.json)
    generator: Any = None
    prompt: tuple[int, ...] = ()


@register
class OrtGenaiRuntime(Runtime):
    name = "ort-genai"
    artifact_format = "genai"
    spec_option = "precision"
    cpu_bound = True  # one intra-op thread computes on the calling thread
    PRECISIONS = ("fp32", "int4")

    def __init__(self, threads: int = 1, precision: str = "fp32") -> None:
        super().__init__(threads)
        if precision not in self.PRECISIONS:
            raise EdgepruneError(
                f"--runtime ort-genai:{precision}: ONNX Runtime GenAI's builder is run here in "
                f"{' or '.join(self.PRECISIONS)}; use --runtime ort-genai or ort-genai:int4"
            )
        self.precision = precision

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime_genai  # noqa: F401
        except ImportError as e:
            return False, f"onnxruntime-genai is not importable ({first_line(e)}); pip install 'edgeprune[genai]'"
        return True, ""

    @property
    def reduced_precision(self) -> bool:
        return self.precision != "fp32"

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"precision": self.precision, "rewound_every": SPAN}

    def build(self, source: Path, dest: Path, cache: Path) -> Path:
        """The builder on the `save_pretrained` folder `source`, written to `dest` (replaced whole,
        so a failed build leaves no folder), its sessions set to this runtime's threads."""
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(tmp)]
        cmd += ["-p", self.precision, "-e", "cpu", "-c", str(cache)]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0 or not (tmp / "genai_config.json").is_file():
            said = (done.stderr or done.stdout).strip().splitlines()
            last = said[-1][:300] if said else "no output"
            shutil.rmtree(tmp, ignore_errors=True)
            raise EdgepruneError(
                f"ONNX Runtime GenAI's builder could not build {source.name} ({last}); "
                "its model families are listed in onnxruntime_genai/models/builder.py"
            )
        config_path = tmp / "genai_config.json"
        config = json.loads(config_path.read_text())
        options = config["model"]["decoder"].setdefault("session_options", {})
        options.update(intra_op_num_threads=self.threads, inter_op_num_threads=1)
        config_path.write_text(json.dumps(config, indent=4))
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        return dest

    def load(self, artifact_path: str) -> GenaiSession:
        ok, why = self.available()
        if not ok:
            raise EdgepruneError(why)
        folder = Path(artifact_path)
        if not (folder / "genai_config.json").is_file():
            raise EdgepruneError(f"{folder}: no genai_config.json; build the folder with ONNX Runtime GenAI's builder")
        import onnxruntime_genai as og

        try:
            length = int(json.loads((folder / "genai_config.json").read_text())["model"]["context_length"])
            return GenaiSession(og.Model(str(folder)), folder, length)
        except Exception as e:  # the runtime raises its own error types for a bad folder
            raise EdgepruneError(
                f"{folder}: ONNX Runtime GenAI cannot load it ({first_line(e)}); build it again"
            ) from e

    def _generator(self, session: GenaiSession, prompt: Sequence[int], room: int) -> Any:
        import onnxruntime_genai as og

        params = og.GeneratorParams(session.model)
        params.set_search_options(max_length=len(prompt) + room, do_sample=False)
        gen = og.Generator(session.model, params)
        gen.append_tokens(np.asarray(prompt, dtype=np.int32))
        return gen

    def run(self, session: GenaiSession, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The next-token logits (1, vocab) after the prompt `inputs[0]` (1, P), on a fresh generator."""
        gen = self._generator(session, [int(t) for t in np.asarray(inputs[0]).reshape(-1)], 1)
        logits = np.asarray(gen.get_logits(), dtype=np.float32)
        return [logits.reshape(-1, logits.shape[-1])[-1:]]

    def greedy(self, session: GenaiSession, prompt: Sequence[int], steps: int) -> list[int]:
        """`steps` tokens of greedy decoding after `prompt`."""
        gen = self._generator(session, prompt, steps)
        for _ in range(steps):
            gen.generate_next_token()
        return [int(t) for t in gen.get_sequence(0)[len(prompt) :]]

    def warm(self, session: GenaiSession, inputs: Sequence[np.ndarray], n: int) -> None:
        """`n` generated tokens untimed: what `measure` times, not the prompt `run` appends."""
        self._generate(session, inputs, n, timed=False)

    def measure(
        self, session: GenaiSession, inputs: Sequence[np.ndarray], warmup: int = 10, repeats: int = 50
    ) -> LatencyStats:
        """`warmup` then `repeats` generated tokens at the context of the prompt `inputs[0]`,
        rewound to it every `SPAN` tokens (module docstring); a rewind is not timed."""
        self.warm(session, inputs, warmup)
        stats = self._generate(session, inputs, repeats, timed=True)
        assert stats is not None  # repeats >= 1
        return dataclasses.replace(stats, warmup=warmup)

    def _generate(
        self, session: GenaiSession, inputs: Sequence[np.ndarray], n: int, timed: bool
    ) -> LatencyStats | None:
        """`n` tokens generated after the prompt `inputs[0]` on the session's generator, timed or not."""
        prompt = tuple(int(t) for t in np.asarray(inputs[0]).reshape(-1))
        span = min(SPAN, session.context_length - len(prompt) - 1)  # near the model's end: fewer per rewind
        if span < 1:
            raise EdgepruneError(
                f"a context of {len(prompt)} tokens leaves no room to time a generated token on this model (its "
                f"context length is {session.context_length}); use --context {session.context_length - 2} or less"
            )
        if session.generator is None or session.prompt != prompt:
            session.generator, session.prompt = self._generator(session, prompt, span + 1), prompt
        gen = session.generator
        done = span  # tokens generated since the last rewind: rewound before the first
        pooled: LatencyStats | None = None
        while n > 0:
            if done >= span:  # back to the prompt, its logits computed; the token they choose is
                gen.rewind_to(len(prompt) - 1)  # selected untimed, so each timed call runs the model on
                gen.append_tokens(np.asarray(prompt[-1:], dtype=np.int32))  # the token before it, at a
                gen.generate_next_token()  # cache of len(prompt) tokens and up
                done = 0
            k = min(n, span - done)
            if timed:
                chunk = time_calls(gen.generate_next_token, 0, k)
                pooled = chunk if pooled is None else pooled.merged(chunk)
            else:
                for _ in range(k):
                    gen.generate_next_token()
            done, n = done + k, n - k
        return pooled

    def prefill(self, session: GenaiSession, prompt: Sequence[int], warmup: int, repeats: int) -> LatencyStats:
        """The time to the first token: a fresh generator (its cache allocated) and `prompt` appended."""
        import onnxruntime_genai as og

        ids = np.asarray(prompt, dtype=np.int32)
        params = og.GeneratorParams(session.model)
        params.set_search_options(max_length=len(ids) + 1, do_sample=False)
        return time_calls(lambda: og.Generator(session.model, params).append_tokens(ids), warmup, repeats)


def has_tokenizer(folder: Path) -> bool:
    """Whether a `save_pretrained` folder holds a tokenizer the builder can load."""
    return any((folder / name).is_file() for name in TOKENIZER_FILES)
