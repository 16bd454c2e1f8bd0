"""Accuracy of a model on a validation loader, or a user metric for models that are not classifiers."""
from __future__ import annotations

import contextlib
import importlib
import math
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

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
            correct += int((model(x).argmax(dim=1) == y).sum())
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
            nats += float(nn.functional.cross_entropy(model(x), y, reduction="sum"))
            total += int(y.numel())
    if total == 0:
        raise EdgepruneError("the validation data is empty; nothing to evaluate")
    return nats / total / math.log(2)


def load_metric(spec: str | None) -> tuple[str, Metric]:
    """`--metric module:function` (called as function(model, val_loader) -> float, higher is better)."""
    if not spec:
        return "top1", top1
    mod_name, _, fn_name = spec.partition(":")
    try:
        return spec, getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError, ValueError, TypeError) as err:  # TypeError: ".relative:fn"
        raise EdgepruneError(f"cannot import --metric {spec} ({first_line(err)}); name a function(model, loader) -> float") from None
