"""Accuracy of a model on a validation loader, or a user metric for models that are not classifiers."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable

import torch
from torch import nn

from edgeprune.errors import EdgepruneError, first_line

Metric = Callable[[nn.Module, Iterable[Any]], float]


@torch.no_grad()
def top1(model: nn.Module, loader: Iterable[Any]) -> float:
    """Top-1 accuracy in [0, 1] over every batch of `loader` (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in loader:
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise EdgepruneError("the validation data is empty; nothing to evaluate")
    return correct / total


def load_metric(spec: str | None) -> tuple[str, Metric]:
    """`--metric module:function` (called as function(model, val_loader) -> float, higher is better)."""
    if not spec:
        return "top1", top1
    mod_name, _, fn_name = spec.partition(":")
    try:
        return spec, getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError, ValueError, TypeError) as err:  # TypeError: ".relative:fn"
        raise EdgepruneError(f"cannot import --metric {spec} ({first_line(err)}); name a function(model, loader) -> float") from None
