"""`--runtime ort-genai` without onnxruntime-genai installed: its settings, its refusals, which
decoder target a runtime gets, and its timing loop on a generator that records what it is asked
(the builds themselves run in tests_zoo/test_causal_lm.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeprune.assets import asset
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.decoder.genai import GenaiTarget, checked
from edgeprune.pipeline.decoder.target import StepTarget, target_class
from edgeprune.runtime_bench import get_runtime
from edgeprune.runtime_bench.ort_genai import SPAN, GenaiSession, OrtGenaiRuntime
from tests.test_cli import assert_one_line_error, run_cli


def test_its_precision_is_fp32_or_int4_and_a_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_runtime("ort-genai:int4").settings()["precision"] == "int4"
    assert not get_runtime("ort-genai").reduced_precision and get_runtime("ort-genai:int4").reduced_precision
    with pytest.raises(EdgepruneError, match=r"ort-genai:int8: .* fp32 or int4"):
        get_runtime("ort-genai:int8")
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # importing it now raises ImportError
    ok, why = OrtGenaiRuntime().available()
    assert not ok and "pip install 'edgeprune[genai]'" in why


def test_a_decoder_gets_the_target_of_its_runtimes_format(tmp_path: Path) -> None:
    assert target_class(get_runtime("ort-cpu"), tmp_path) is StepTarget
    with pytest.raises(EdgepruneError, match=r"GenAI's builder loads the model's tokenizer, and .* has none"):
        target_class(get_runtime("ort-genai"), tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert target_class(get_runtime("ort-genai"), tmp_path) is GenaiTarget
    with pytest.raises(EdgepruneError, match="--runtime torch-cpu: a language model's decode step is measured as ONNX"):
        target_class(get_runtime("torch-cpu"), tmp_path)


class Recorder:
    """A generator that keeps its sequence as ONNX Runtime GenAI's does, and records its length at
    every generated token."""

    def __init__(self, prompt: list[int]) -> None:
        self.sequence = list(prompt)
        self.lengths: list[int] = []
        self.rewinds = 0

    def generate_next_token(self) -> None:
        self.lengths.append(len(self.sequence))
        self.sequence.append(0)

    def rewind_to(self, n: int) -> None:
        self.rewinds += 1
        del self.sequence[n:]

    def append_tokens(self, tokens: Any) -> None:
        self.sequence += [int(t) for t in tokens]


def test_measuring_rewinds_to_the_prompt_so_the_cache_stays_at_the_context(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Recorder] = []

    def generator(self: OrtGenaiRuntime, session: GenaiSession, prompt: Any, room: int) -> Recorder:
        made.append(Recorder(list(prompt)))
        return made[-1]

    monkeypatch.setattr(OrtGenaiRuntime, "_generator", generator)
    rt, session = OrtGenaiRuntime(), GenaiSession(model=None, folder=Path("x"), context_length=512)
    prompt = [np.arange(100).reshape(1, 100)]
    stats = rt.measure(session, prompt, warmup=5, repeats=40)
    assert stats.n == 40 and stats.warmup == 5
    again = rt.measure(session, prompt, warmup=0, repeats=3)  # the same prompt: the same generator, kept
    assert again.n == 3 and len(made) == 1
    gen = made[0]
    # after each rewind, one untimed call chooses the prompt's next token; the timed ones each run the
    # model on a token at a cache of 100 tokens and up, never further than SPAN past it
    assert len(gen.lengths) == 48 + gen.rewinds and gen.rewinds >= 48 // SPAN
    assert min(gen.lengths) == 100 and max(gen.lengths) == 100 + SPAN
    rt.measure(session, [np.arange(50).reshape(1, 50)], warmup=0, repeats=2)  # another prompt: a new generator
    assert len(made) == 2 and made[1].lengths == [50, 51, 52]
    rt.measure(session, [np.arange(509).reshape(1, 509)], warmup=0, repeats=3)  # near the model's end (512)
    assert made[2].lengths == [509, 510, 511, 509, 510] and made[2].rewinds == 2
    with pytest.raises(EdgepruneError, match=r"no room to time a generated token .* use --context 510 or less"):
        rt.measure(session, [np.arange(511).reshape(1, 511)], warmup=0, repeats=1)


def test_a_model_that_is_not_a_decoder_is_refused_on_it_in_one_line(tmp_path: Path) -> None:
    """Not "pip install onnxruntime-genai" (which would not help): what it runs, and what to use."""
    out = tmp_path / "out"
    model = asset("resnet20_cifar10.pt")
    rc, _, err = run_cli([model, "--arch", "resnet20", "--budget", "50%", "--runtime", "ort-genai", "--out", out])
    line = assert_one_line_error(rc, err)
    assert "runs genai models, which edgeprune makes of decoder language models only" in line and "ort-cpu" in line
    assert not out.exists()


def test_a_build_is_checked_at_its_precisions_tolerance() -> None:
    """float32: the runtime's atol/rtol on the logits; int4: a relative L2 error within INT4_TOLERANCE."""
    want = torch.linspace(-1.0, 1.0, 64).reshape(1, 64)
    close = want.numpy() + 1e-5
    assert checked(OrtGenaiRuntime(), [close], want) == pytest.approx(1e-5, rel=0.01)
    with pytest.raises(EdgepruneError, match="differs from PyTorch"):
        checked(OrtGenaiRuntime(), [want.numpy() + 0.05], want)
    int4 = OrtGenaiRuntime(precision="int4")
    noisy = want.numpy() * 1.1  # relative L2 error 0.1
    assert checked(int4, [noisy], want) == pytest.approx(0.1, rel=0.01)
    with pytest.raises(EdgepruneError, match=r"int4: .* by 0\.300 \(relative L2\), over 0\.2"):
        checked(int4, [want.numpy() * 1.3], want)
