"""Thin helpers around torch-pruning's DependencyGraph: building it, naming layers, getting groups."""
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
