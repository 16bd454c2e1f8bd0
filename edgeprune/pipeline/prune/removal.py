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

import copy
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
import torch_pruning as tp
from torch import nn

from edgeprune import modelrun
from edgeprune.pipeline.prune.graph import GraphError, Touch

#: (layer name, side) -> (kind, parameter dim, the channel indices to remove)
Cuts = dict[tuple[str, str], tuple[str, int, set[int]]]

_F = tp.pruner.function
_PRUNERS = {
    "conv": _F.ConvPruner(),
    "gconv": _F.ConvPruner(),
    "convT": _F.ConvPruner(),
    "dwconv": _F.DepthwiseConvPruner(),
    "linear": _F.LinearPruner(),
    "bn": _F.BatchnormPruner(),
    "ln": _F.LayernormPruner(),
    "gn": _F.GroupNormPruner(),
    "inorm": _F.InstanceNormPruner(),
    "embed": _F.EmbeddingPruner(),
    "prelu": _F.PReLUPruner(),
    "lstm": _F.LSTMPruner(),
}

#: torch's own layers: removing a channel from one of them is exact by construction
STANDARD = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def merge(touches: Iterable[Touch]) -> Cuts:
    cuts: Cuts = {}
    for t in touches:
        _kind, _dim, idxs = cuts.setdefault((t.name, t.side), (t.kind, t.dim, set()))
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
            setattr(
                owner, leaf, nn.Parameter(old.detach().index_select(dim, keep).clone(), requires_grad=old.requires_grad)
            )
            continue
        if kind == "width":
            owner, leaf = _owner(model, name)
            setattr(owner, leaf, getattr(owner, leaf) - len(idxs))
            continue
        if kind == "sizes":
            owner, leaf = _owner(model, name)
            sizes = list(getattr(owner, leaf))
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            new = [size - sum(start <= i < start + size for i in idxs) for start, size in zip(starts, sizes)]
            setattr(owner, leaf, type(getattr(owner, leaf))(new))
            continue
        layer = model.get_submodule(name)
        if kind == "gconv" and side == "in":
            _grouped_inputs(cast(nn.Conv2d, layer), idxs)
        elif kind == "rms":
            _rms_norm(cast(nn.RMSNorm, layer), idxs)
        elif kind in _PRUNERS:
            pruner = _PRUNERS[kind]
            before = getattr(layer, "out_channels", getattr(layer, "out_features", None))
            (pruner.prune_out_channels if side == "out" else pruner.prune_in_channels)(layer, removed)
            if side == "out" and kind in ("conv", "gconv", "linear") and before:
                _per_output(layer, before, idxs)
        else:
            raise GraphError(f"edgeprune cannot remove channels from {name} ({type(layer).__name__})")


def _per_output(layer: nn.Module, size: int, removed: set[int]) -> None:
    """A layer's other tensors with one entry per output channel (a weight-standardized conv's
    `gain`) lose the removed channels too."""
    keep = torch.tensor([i for i in range(size) if i not in removed], dtype=torch.long)
    for name, t in [*layer.named_parameters(recurse=False), *layer.named_buffers(recurse=False)]:
        if name not in ("weight", "bias") and t.dim() and t.shape[0] == size:
            new = t.detach().index_select(0, keep).clone()
            setattr(
                layer, name, nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new
            )


@torch.no_grad()
def inexact_layers(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[tuple[str, str], str]:
    """(layer, side) -> why, for Conv/Linear subclasses on which removing a channel is not the same as
    silencing it: a weight-standardized conv (NFNet's ScaledStdConv2d) normalizes each filter over
    its input channels, so taking one out changes the others. Each subclass layer is tried alone on
    a random input of the shape it sees in the model; torch's own classes need no trial."""
    custom = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
        and type(m) not in STANDARD
        and not getattr(m, "transposed", False)
    }
    if not custom:
        return {}
    shapes: dict[str, torch.Size] = {}

    def seen(name: str) -> Any:
        def record(mod: nn.Module, args: tuple) -> None:
            shapes.setdefault(name, args[0].shape)

        return record

    hooks = [m.register_forward_pre_hook(seen(n)) for n, m in custom.items()]
    try:
        modelrun.run(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    found = {}
    for name, layer in custom.items():
        if name in shapes:
            for side, why in _trial(layer, shapes[name]).items():
                found[(name, side)] = why
    return found


def _trial(layer: nn.Module, shape: torch.Size) -> dict[str, str]:
    """Which of `layer`'s sides (in, out) cannot lose a channel exactly, and why. One channel of every
    group goes (a grouped conv keeps its groups); a depthwise conv's sides are one, tried as "in"."""
    linear = isinstance(layer, nn.Linear)
    axis = -1 if linear else 1
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    groups = getattr(layer, "groups", 1)
    depthwise = groups > 1 and groups == x.shape[axis]
    out: dict[str, str] = {}
    with modelrun.eval_mode(layer):
        ref = layer(x)
        tries = {"in": x.shape[axis], "out": 0 if depthwise else ref.shape[axis]}
        for side, size in tries.items():
            per = size // groups
            if per < 2 and not (depthwise and side == "in"):
                continue
            drop = [g * per for g in range(groups)]
            cut = copy.deepcopy(layer)
            try:
                if side == "in":
                    keep = torch.tensor([c for c in range(size) if c not in drop])
                    if depthwise:
                        _PRUNERS["dwconv"].prune_out_channels(cut, drop)
                    elif groups > 1:  # a grouped conv
                        _grouped_inputs(cast(nn.Conv2d, cut), set(drop))
                    else:
                        _PRUNERS["linear" if linear else "conv"].prune_in_channels(cut, drop)
                    want = layer(x.index_fill(axis, torch.tensor(drop), 0.0))
                    got = cut(x.index_select(axis, keep))
                    if depthwise:
                        want = want.index_select(axis, keep)
                else:
                    _PRUNERS["linear" if linear else "conv"].prune_out_channels(cut, drop)
                    _per_output(cut, size, set(drop))
                    got, want = cut(x), ref.index_select(axis, torch.tensor([c for c in range(size) if c not in drop]))
                exact = _close(got, want)
            except Exception:  # noqa: BLE001 - a layer that fails once cut is as unusable as an inexact one
                exact = False
            if not exact:
                out[side] = (
                    f"{type(layer).__name__} transforms its weights or outputs (e.g. weight standardization): "
                    f"removing one {'input' if side == 'in' else 'output'} channel changes the others"
                )
    return out


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + float(b.abs().max()))))


def _owner(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent, _, leaf = path.rpartition(".")
    return (model.get_submodule(parent) if parent else model), leaf


def _grouped_inputs(conv: nn.Conv2d, removed: set[int]) -> None:
    """Remove input channels of a grouped conv evenly per group, each group keeping its own local indices."""
    per_in = conv.in_channels // conv.groups
    kept = [
        [c - g * per_in for c in range(g * per_in, (g + 1) * per_in) if c not in removed] for g in range(conv.groups)
    ]
    if len({len(k) for k in kept}) != 1 or not kept[0]:
        raise GraphError(
            f"grouped convolution (groups={conv.groups}) must keep the same number of input channels in every group"
        )
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
