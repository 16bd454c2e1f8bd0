"""The metric a run reports: top-1 for a classifier with labels, fidelity to the unpruned model
without them (or for outputs that are not class logits), or a user's `--metric`.

Fidelity compares the model's outputs with the unpruned model's on the held-out inputs, so it
needs no labels and fits any output structure; higher is better and the unpruned model scores 1.0:
- where the first output is class logits (a (batch, classes) tensor, or one a model names
  `logits`): **top-1 agreement**, the share of inputs (and positions, for per-token logits)
  whose arg-max class is the unpruned model's;
- otherwise (a detector's boxes and scores, a segmenter's masks, hidden states): **R²** against
  the unpruned model's outputs, 1 - sum((out - ref)^2) / sum((ref - mean ref)^2) per channel (dim 1
  of each floating output: a detector's box coordinates and each class score apart, so pixels do not
  drown probabilities), averaged over the channels of each *part* of an output, and the lowest part
  stands for the model (0 is a model no better than each channel's mean). An output's parts are its
  probability channels (every reference value in [0, 1]: a detector's class scores) and the rest
  (its boxes): averaged together, the four box channels of a one-class detector whose int8 model had
  lost every class score still read 0.56, its boxes' 0.99 carrying the dead score channel.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.errors import EdgepruneError, first_line

Metric = Callable[[nn.Module, Iterable[Any]], float]


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients while open; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def top1(model: nn.Module, loader: Iterable[Any]) -> float:
    """Top-1 accuracy in [0, 1] over every batch of `loader` (eval mode, restored afterwards)."""
    correct = total = 0
    with evaluating(model):
        for x, y in loader:
            if y is None:
                raise EdgepruneError(
                    "top-1 needs labels and the data has none; its metric is fidelity to the unpruned model"
                )
            correct += int((modelrun.first_output(modelrun.call(model, x)).argmax(dim=1) == y).sum())
            total += int(y.numel())
    if total == 0:
        raise EdgepruneError("the validation data is empty; nothing to evaluate")
    return correct / total


def bits_per_char(model: nn.Module, loader: Iterable[Any]) -> float:
    """Mean next-character cross-entropy in bits (a language model's flattened logits, data/text.py).
    Lower is better, unlike top-1: read it as a loss wherever it is reported."""
    nats = total = 0.0
    with evaluating(model):
        for x, y in loader:
            nats += float(nn.functional.cross_entropy(modelrun.call(model, x), y, reduction="sum"))
            total += int(y.numel())
    if total == 0:
        raise EdgepruneError("the validation data is empty; nothing to evaluate")
    return nats / total / math.log(2)


bits_per_char.higher_is_better = False  # type: ignore[attr-defined]  # read where the report states the metric


def load_metric(spec: str | None) -> tuple[str, Metric]:
    """`--metric module:function` (called as function(model, val_loader) -> float, higher is better)."""
    if not spec:
        return "top1", top1
    mod_name, _, fn_name = spec.partition(":")
    try:
        return spec, getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError, ValueError, TypeError) as err:  # TypeError: ".relative:fn"
        raise EdgepruneError(
            f"cannot import --metric {spec} ({first_line(err)}); name a function(model, loader) -> float"
        ) from None


def is_class_logits(name: str, t: torch.Tensor) -> bool:
    """Whether an output is class logits: a floating (batch, classes) tensor, or one named `logits`."""
    last = name.rsplit(".", 1)[-1]
    return t.is_floating_point() and t.ndim >= 2 and t.shape[-1] >= 2 and (t.ndim == 2 or last == "logits")


class Fidelity:
    """Fidelity to `teacher` (the unpruned model) as a `Metric`: top-1 agreement where the teacher's
    first output is class logits, else R² pooled over the floating outputs (module docstring).
    Outputs are paired by position, so a runtime's session (measure.RuntimeModel) is measured the same way."""

    def __init__(self, teacher: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> None:
        self.teacher = teacher
        outs = modelrun.named_outputs(modelrun.run_raw(teacher, example_inputs))
        if not any(t.is_floating_point() for _, t in outs):
            raise EdgepruneError(
                "the model's outputs are all integers (indices, not scores): neither distillation nor "
                "fidelity can compare them; give labels and a --metric, or a model that returns scores"
            )
        self.agreement = is_class_logits(*outs[0])
        self.name = "agreement" if self.agreement else "fidelity"
        self.describe = (
            "top-1 agreement with the unpruned model"
            if self.agreement
            else "R² of the outputs against the unpruned model's, the lowest of their parts (probability "
            "channels, e.g. class scores, and the rest, e.g. boxes)"
        )
        #: the last call's R² per part ("output 0 probabilities", "output 0 values", ...), for the report
        self.parts: dict[str, float] = {}

    def __call__(self, model: nn.Module, loader: Iterable[Any]) -> float:
        agree = count = 0
        sse: dict[int, torch.Tensor] = {}
        sst: dict[int, torch.Tensor] = {}
        low: dict[int, torch.Tensor] = {}
        high: dict[int, torch.Tensor] = {}
        with evaluating(model), evaluating(self.teacher):
            for x, _ in loader:
                want = modelrun.flatten_outputs(modelrun.call(self.teacher, x))
                got = modelrun.flatten_outputs(modelrun.call(model, x))
                if self.agreement:
                    agree += int((got[0].argmax(-1) == want[0].argmax(-1)).sum())
                    count += int(want[0].argmax(-1).numel())
                    continue
                for i, (g, w) in enumerate(zip(got, want)):
                    if w.is_floating_point():
                        w64, g64 = _channels(w.double()), _channels(g.double().reshape(w.shape))
                        sse[i] = sse.get(i, 0.0) + ((g64 - w64) ** 2).sum(1)
                        sst[i] = sst.get(i, 0.0) + ((w64 - w64.mean(1, keepdim=True)) ** 2).sum(1)
                        low[i] = torch.minimum(low[i], w64.amin(1)) if i in low else w64.amin(1)
                        high[i] = torch.maximum(high[i], w64.amax(1)) if i in high else w64.amax(1)
                        count += 1
        if count == 0:
            raise EdgepruneError("the validation data is empty; nothing to evaluate")
        if self.agreement:
            return agree / count
        # channels constant in the reference (a dead ReLU channel) have no variance to explain: left out;
        # a detector's class scores vary a million times less than its boxes in pixels and stay in
        self.parts = {}
        for i in sse:
            varies = sst[i] > 1e-9 * sst[i].max() + 1e-12
            prob = (low[i] >= 0) & (high[i] <= 1)
            for part, mask in (("probabilities", prob & varies), ("values", ~prob & varies)):
                if bool(mask.any()):
                    self.parts[f"output {i} {part}"] = 1.0 - float((sse[i][mask] / sst[i][mask]).mean())
        return min(self.parts.values(), default=1.0)


def _channels(t: torch.Tensor) -> torch.Tensor:
    """(channels, values) of an output: dim 1 as the channels (a detector's boxes and class scores,
    a feature map's channels), everything else as values; a 1-D output is one channel."""
    if t.ndim < 2:
        return t.reshape(1, -1)
    return t.transpose(0, 1).reshape(t.shape[1], -1)
