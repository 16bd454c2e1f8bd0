"""Removing channels from named layers: what `apply` and the probe do with a plan's touches.

All of a plan's touches are computed on the unpruned graph, so their indices are in the original
coordinates; they are merged per (layer, side) and each side of each layer is cut once. That needs
one graph per model instead of one re-mapping per group, and the order of the cuts does not matter.

Standard layers are cut by torch-pruning's own per-layer functions. A grouped convolution (not
depthwise) keeps its `groups`: its output channels go evenly per group (rows, as for any conv; the
space's segments make the counts equal) and its input channels too, each group keeping its own
local indices, which torch-pruning's conv pruner does not do (it keeps the first group's indices for
all of them). That is what makes ResNeXt, RegNet and ResNeSt blocks prunable.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.pipeline.prune.graph import GraphError, Touch

#: (layer name, side) -> (kind, parameter dim, the channel indices to remove)
Cuts = dict[tuple[str, str], tuple[str, int, set[int]]]

_F = tp.pruner.function
_PRUNERS = {
    "conv": _F.ConvPruner(), "gconv": _F.ConvPruner(), "convT": _F.ConvPruner(), "dwconv": _F.DepthwiseConvPruner(),
    "linear": _F.LinearPruner(), "bn": _F.BatchnormPruner(), "ln": _F.LayernormPruner(), "gn": _F.GroupNormPruner(),
    "inorm": _F.InstanceNormPruner(), "embed": _F.EmbeddingPruner(), "prelu": _F.PReLUPruner(), "lstm": _F.LSTMPruner(),
}


def merge(touches: Iterable[Touch]) -> Cuts:
    cuts: Cuts = {}
    for t in touches:
        kind, dim, idxs = cuts.setdefault((t.name, t.side), (t.kind, t.dim, set()))
        idxs.update(t.idxs)
    return cuts


@torch.no_grad()
def remove(model: nn.Module, cuts: Cuts) -> None:
    """Cut every (layer, side) of `cuts` from `model`, in place."""
    for (name, side), (kind, dim, idxs) in cuts.items():
        removed = sorted(idxs)
        if kind == "param":
            owner, leaf = _owner(model, name)
            old = getattr(owner, leaf)
            keep = torch.tensor([i for i in range(old.shape[dim]) if i not in idxs], dtype=torch.long)
            setattr(owner, leaf, nn.Parameter(old.detach().index_select(dim, keep).clone(), requires_grad=old.requires_grad))
            continue
        layer = model.get_submodule(name)
        if kind == "gconv" and side == "in":
            _grouped_inputs(layer, idxs)
        elif kind == "rms":
            _rms_norm(layer, idxs)
        elif kind in _PRUNERS:
            pruner = _PRUNERS[kind]
            (pruner.prune_out_channels if side == "out" else pruner.prune_in_channels)(layer, removed)
        else:
            raise GraphError(f"edgeprune cannot remove channels from {name} ({type(layer).__name__})")


def _owner(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent, _, leaf = path.rpartition(".")
    return (model.get_submodule(parent) if parent else model), leaf


def _grouped_inputs(conv: nn.Conv2d, removed: set[int]) -> None:
    """Remove input channels of a grouped conv evenly per group, each group keeping its own local indices."""
    per_in = conv.in_channels // conv.groups
    kept = [[c - g * per_in for c in range(g * per_in, (g + 1) * per_in) if c not in removed] for g in range(conv.groups)]
    if len({len(k) for k in kept}) != 1 or not kept[0]:
        raise GraphError(f"grouped convolution (groups={conv.groups}) must keep the same number of input channels in every group")
    per_out = conv.out_channels // conv.groups
    index = torch.tensor([kept[o // per_out] for o in range(conv.out_channels)], dtype=torch.long)
    index = index.view(*index.shape, *[1] * (conv.weight.dim() - 2)).expand(-1, -1, *conv.weight.shape[2:])
    conv.weight = nn.Parameter(conv.weight.gather(1, index).clone(), requires_grad=conv.weight.requires_grad)
    conv.in_channels = len(kept[0]) * conv.groups


def _rms_norm(norm: nn.RMSNorm, removed: set[int]) -> None:
    keep = torch.tensor([i for i in range(norm.normalized_shape[-1]) if i not in removed], dtype=torch.long)
    if norm.weight is not None:
        norm.weight = nn.Parameter(norm.weight.index_select(-1, keep).clone())
    norm.normalized_shape = (*norm.normalized_shape[:-1], len(keep))
