"""A fast FLOPs predictor for a plan, so the search can propose candidates without pruning a copy.

One forward pass records each Conv/Linear layer's multiply-accumulates; pruning scales a layer's cost
by the kept fraction of its input group and of its output group (a depthwise conv's input and output
are the same channels, counted once). Norms, activations and attention's matmuls are not modelled:
the predictor only *proposes*; what a candidate costs is always counted or measured exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edgeprune.pipeline.counting import layer_macs
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.space import PruningSpace

#: a layer's side as one group sees it: the group, its units there, the segments they make up
_Entry = tuple[str, frozenset[int], tuple[int, ...]]
#: the kept fraction of an entry's units
_Fraction = Callable[[str, frozenset[int], tuple[int, ...]], Any]


class CostModel:
    """A plan's predicted cost, the sum of its layers' costs at their kept widths. Here a layer's
    cost is its FLOPs (multiply-accumulates); a subclass may price layers otherwise (the per-layer
    latency table's `LatencyCost`) while the searches keep asking the same questions."""

    #: how widths are priced, as reports name it (report.json's search.cost)
    name = "flops"
    #: what the cost is, for a search's steps (base.Step.predicts): FLOPs, or ("budget") the budget's own figure
    unit = "flops"
    #: a cost no width changes (added to whole plans, not to the layers a width step touches)
    fixed: float = 0.0

    def __init__(self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor]) -> None:
        self._layer_macs = layer_macs(model, example_inputs)
        # layer name -> [(group id, the units of that group the layer's input/output carries, the
        # segments they make up)]; a concat's consumer takes its input from several groups
        self._in: dict[str, list[_Entry]] = {}
        self._out: dict[str, list[_Entry]] = {}
        #: group id -> the layers whose cost depends on its width
        self.touching: dict[str, set[str]] = {}
        for g in space.groups:
            for member, segs in zip(g.members, g.member_segments):
                name, side = member[:-1].split("(")
                units = frozenset(u for s in segs for u in g.segments[s])
                (self._out if side == "out" else self._in).setdefault(name, []).append((g.id, units, tuple(segs)))
                self.touching.setdefault(g.id, set()).add(name)
        self._depthwise = {
            name
            for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
        }
        self.total = float(self._total(lambda gid, units, segs: 1.0, {}))

    def flops(self, plan: Plan) -> float:
        kept = {gid: set(g.keep) for gid, g in plan.groups.items()}

        def fraction(gid: str, units: frozenset[int], segs: tuple[int, ...]) -> float:
            return len(units & kept[gid]) / len(units) if gid in kept else 1.0

        return float(self._total(fraction, dict.fromkeys(plan.removed_blocks, 0.0)))

    def flops_at(
        self,
        counts: Mapping[str, Sequence[int]],
        sizes: Mapping[str, Sequence[int]],
        removed_blocks: Sequence[str] = (),
        layers: Iterable[str] | None = None,
    ) -> float:
        """The cost when group `gid` keeps `counts[gid][s]` of the `sizes[gid][s]` units of its
        segment s (absent: whole), over `layers` only when given: how the default search's gap
        filling prices one width step without building plans (only the layers touching the widened
        group change)."""

        def fraction(gid: str, units: frozenset[int], segs: tuple[int, ...]) -> float:
            if gid not in counts:
                return 1.0
            return sum(counts[gid][s] for s in segs) / sum(sizes[gid][s] for s in segs)

        return float(self._total(fraction, dict.fromkeys(removed_blocks, 0.0), layers))

    def expected_flops(self, keep: Mapping[str, Any], block_keep: Mapping[str, Any] | None = None) -> Any:
        """The cost when each group keeps the fraction `keep[gid]` of its units and each named block
        is kept with probability `block_keep[name]`; differentiable when those are tensors (TAS's
        expected cost under its width and depth distributions). Groups widths and depth are taken
        as independent, so the expectation of each layer's product is the product of expectations."""
        return self._total(lambda gid, units, segs: keep.get(gid, 1.0), block_keep or {})

    def prunable_input(self, layer: str) -> bool:
        """Whether some group's pruning narrows what `layer` reads."""
        return bool(self._in.get(layer))

    def prunable_output(self, layer: str) -> bool:
        """Whether some group's pruning narrows what `layer` writes."""
        return bool(self._out.get(layer))

    def shares(self, layer: str, keep: Mapping[str, Any]) -> tuple[Any, Any]:
        """The kept fractions of `layer`'s input and output channels when each group keeps the
        fraction `keep[gid]` (1 when absent); a depthwise conv's input is its output."""
        f_out = self._share(self._out.get(layer), lambda gid, units, segs: keep.get(gid, 1.0))
        return (
            f_out
            if layer in self._depthwise
            else self._share(self._in.get(layer), lambda gid, units, segs: keep.get(gid, 1.0))
        ), f_out

    @staticmethod
    def _share(entries: list[_Entry] | None, fraction: _Fraction) -> Any:
        if not entries:
            return 1.0
        total = sum(len(units) for _, units, _ in entries)
        return sum(len(units) * fraction(gid, units, segs) for gid, units, segs in entries) / total

    def _total(self, fraction: _Fraction, block_keep: Mapping[str, Any], layers: Iterable[str] | None = None) -> Any:
        """Sum of layer costs (`layer_cost`) at the kept shares of their input and output channels,
        scaled by the keep probability of the block they sit in, plus the `fixed` cost when whole
        plans are priced (`layers` None). Channels of groups outside the plan count
        as kept; a concat's other inputs (not groups) are unknown here and ignored."""
        blocks = [(b + ".", p) for b, p in block_keep.items()]
        total: Any = self.fixed if layers is None else 0.0
        for name in self._layer_macs if layers is None else layers:
            f_out = self._share(self._out.get(name), fraction)
            f_in = 1.0 if name in self._depthwise else self._share(self._in.get(name), fraction)
            kept_block = [p for prefix, p in blocks if name.startswith(prefix) or name + "." == prefix]
            total = total + self.layer_cost(name, f_in, f_out) * (kept_block[0] if kept_block else 1.0)
        return total

    def layer_cost(self, name: str, f_in: Any, f_out: Any) -> Any:
        """`name`'s cost when it keeps the fractions `f_in` of its input and `f_out` of its output
        channels: its MACs scaled by both."""
        return self._layer_macs.get(name, 0.0) * f_in * f_out
