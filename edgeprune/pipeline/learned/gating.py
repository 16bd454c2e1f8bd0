"""Acting on a group's channels *during* the forward pass: the hook points learned methods share.

Pruning from Scratch multiplies a group's channels by learned gates, TAS mixes the outputs of
sampled widths; both need, for every prunable channel group, the places where those channels are
produced. A group's channels leave through every layer that writes them (a residual stream is
written by each block's last norm and by the shortcut), so an operation applied at all of them
acts on the group's channels wherever they flow. The hook goes after a layer's BatchNorm when it
has one (gate · BN(conv(x)) is what removing the channel removes, bias and shift included),
otherwise on the Conv/Linear itself. Each hook point carries the map from its own channel index
to the group's unit index, so a group that reaches a layer at an offset (a concat) is still
addressed in the group's units.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.prune.graph import Graph
from edgeprune.pipeline.prune.space import PruningSpace

_BN = nn.modules.batchnorm._BatchNorm
#: the touched layers that write a group's channels and can carry a hook
_PRODUCERS = ("conv", "gconv", "dwconv", "linear", "bn")


@dataclasses.dataclass(frozen=True)
class HookPoint:
    group: str
    layer: str  # module name
    units: torch.Tensor  # units[c] = the group unit that output channel c of the layer carries
    dim: int  # the channel dimension of the layer's output (1 for conv/BN, -1 for Linear)

    def along(self, values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Per-unit `values` of the group, picked for this layer's channels and shaped to broadcast
        over its output `out`."""
        shape = [1] * out.dim()
        shape[self.dim] = -1
        return values[self.units].view(shape)

    def per_sample(self, values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-unit `values` (batch x units) picked for this layer's channels and shaped
        to broadcast over its output `out` (dynamic methods decide channels image by image)."""
        shape = [out.shape[0]] + [1] * (out.dim() - 1)
        shape[self.dim] = -1
        return values[:, self.units].view(shape)

    @property
    def is_identity(self) -> bool:
        """Whether the layer's channels are exactly the group's units, in order."""
        return bool(torch.equal(self.units, torch.arange(len(self.units))))


#: (hook point, layer output) -> new layer output
ChannelFn = Callable[[HookPoint, torch.Tensor], torch.Tensor]


def require_channel_groups(space: PruningSpace, method: str) -> None:
    """Refuse a space with attention-head groups: the learned methods act on channels at hook
    points, and a head group has none."""
    heads = [g.id for g in space.groups if g.kind != "channels"]
    if heads:
        raise EdgepruneError(
            f"--method {method} acts on channels; {heads[0]} is an attention-head group: "
            "mark it --unprunable or use --method l1"
        )


def hook_points(model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor]) -> list[HookPoint]:
    """Where each channel group of `space` is produced (heads groups are not channels: skipped)."""
    graph = Graph(model, example_inputs)
    points: list[HookPoint] = []
    for g in space.groups:
        if g.kind != "channels":
            continue
        producers: dict[str, dict[int, int]] = {}
        kinds: dict[str, str] = {}
        for t in graph.coupled(g.id, range(g.size)):
            if t.side == "out" and t.kind in _PRODUCERS:
                producers.setdefault(t.name, {}).update(zip(t.idxs, t.roots))
                kinds[t.name] = t.kind
        normed = [n for n in producers if kinds[n] == "bn"]
        for name, mapping in producers.items():
            if kinds[name] != "bn" and graph.feeds(name, normed):
                continue  # its BatchNorm is hooked instead
            units = torch.tensor([mapping[c] for c in sorted(mapping)], dtype=torch.long)
            points.append(HookPoint(g.id, name, units, -1 if kinds[name] == "linear" else 1))
    return points


@contextlib.contextmanager
def channel_hooks(model: nn.Module, points: Sequence[HookPoint], fn: ChannelFn) -> Iterator[None]:
    """Apply `fn` to the output of every hook point while the context is open."""

    def hook(point: HookPoint) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], torch.Tensor]:
        def run(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            return fn(point, out)

        return run

    handles = [model.get_submodule(p.layer).register_forward_hook(hook(p)) for p in points]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def fold(model: nn.Module, points: Sequence[HookPoint], values: dict[str, torch.Tensor]) -> None:
    """Scale, in the weights themselves, the channels every hook point produces by its group's
    per-unit `values`, so that `model` (in eval mode) computes what it computed with
    `out * values` applied at the hooks. A channel whose value is 0 then outputs exactly 0
    everywhere it flows, and removing it changes nothing."""
    for p in points:
        layer = model.get_submodule(p.layer)
        if isinstance(layer, _BN) and not layer.affine:  # (its weight is None)
            raise EdgepruneError(
                f"{p.layer} is a BatchNorm without affine parameters, so a channel mask cannot be folded "
                "into it; give it affine=True or mark the layer --unprunable"
            )
        weight, bias = cast(torch.Tensor, layer.weight), cast("torch.Tensor | None", layer.bias)
        v = values[p.group][p.units].to(weight.dtype)
        if isinstance(layer, _BN):
            weight.mul_(v)
        else:  # Conv / Linear: output channels are the weight's first dimension
            weight.mul_(v.view(-1, *[1] * (weight.dim() - 1)))
        if bias is not None:
            bias.mul_(v)
