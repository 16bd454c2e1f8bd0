"""Exact FLOPs and parameter counts of a model, as reported and as budgeted.

"FLOPs" here are multiply-accumulates counted by torch-pruning's op counter, the pruning
literature's convention (ResNet-56 = 125 MFLOPs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch_pruning as tp
from torch import nn

from edgeprune import modelrun
from edgeprune.pipeline.prune import graph


@dataclasses.dataclass(frozen=True)
class Counts:
    flops: int
    params: int


def count(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> Counts:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            flops, params = tp.utils.count_ops_and_params(model, tuple(example_inputs))
    finally:
        model.train(was_training)
    return Counts(int(flops), int(params))


def layer_macs(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[str, float]:
    """Multiply-accumulates of each Conv/Linear layer on the example inputs, from one forward pass."""
    macs: dict[str, float] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], None]:
        def fn(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            if isinstance(mod, nn.Linear):
                macs[name] = macs.get(name, 0.0) + out.numel() * mod.in_features
            else:  # convolution: each output element costs (in/groups)·k products
                k = cast(torch.Tensor, mod.weight)[0].numel()
                macs[name] = macs.get(name, 0.0) + out.numel() * k

        return fn

    run_hooked_layers(model, example_inputs, hook)
    return macs


def run_hooked_layers(
    model: nn.Module, example_inputs: Sequence[torch.Tensor], hook: Callable[[str], Callable[..., None]]
) -> None:
    """One forward pass with `hook(name)` as a forward hook on every Conv/Linear layer (removed after)."""
    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, graph.ROOT_TYPES)]
    try:
        modelrun.run(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
