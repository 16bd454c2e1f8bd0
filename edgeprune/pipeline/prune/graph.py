"""Thin helpers around torch-pruning's DependencyGraph and model execution.

Everything that builds a graph or runs a model on example inputs goes through here, so the rest of
the pruning code never repeats how inputs are passed or outputs are flattened.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch_pruning as tp
from torch import nn

#: layer types whose output channels start a pruning group
ROOT_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)


def build_graph(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> tp.DependencyGraph:
    """Trace `model` once; the graph knows which layers' channels are coupled.

    Tracing uses autograd, so it is forced on even when a caller runs under `torch.no_grad()`.
    """
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=tuple(example_inputs), verbose=False)


def module_name(graph: tp.DependencyGraph, module: Any) -> str | None:
    return graph._module2name.get(module)  # torch-pruning keeps no public accessor for this map


def out_channels(graph: tp.DependencyGraph, module: nn.Module) -> int | None:
    pruner = graph.get_pruner_of_module(module)
    return None if pruner is None else pruner.get_out_channels(module)


def group_of(graph: tp.DependencyGraph, module: nn.Module, idxs: Sequence[int]) -> Any:
    """The coupled group that removing output channels `idxs` of `module` implies."""
    pruner = graph.get_pruner_of_module(module)
    return graph.get_pruning_group(module, pruner.prune_out_channels, list(idxs))


@torch.no_grad()
def run(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Forward in eval mode; outputs flattened to a list of tensors (tuples and dicts included)."""
    was_training = model.training
    model.eval()
    try:
        return flatten_outputs(model(*example_inputs))
    finally:
        model.train(was_training)


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    return []


def output_shapes(outputs: Sequence[torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in outputs]
