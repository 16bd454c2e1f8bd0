"""A fast FLOPs predictor for a plan, so the search can propose candidates without pruning a copy.

One forward pass records each Conv/Linear layer's multiply-accumulates; pruning scales a layer's cost
by the kept fraction of its input group and of its output group (a depthwise conv's input and output
are the same channels, counted once). Norms, activations and attention's matmuls are not modelled:
the predictor only *proposes*; what a candidate costs is always counted or measured exactly.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from edgeprune.pipeline.counting import layer_macs
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.space import PruningSpace


class CostModel:
    def __init__(self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor]) -> None:
        self._layer_macs = layer_macs(model, example_inputs)
        # layer name -> [(group id, the units of that group the layer's input/output carries)];
        # a concat's consumer takes its input from several groups
        self._in: dict[str, list[tuple[str, frozenset[int]]]] = {}
        self._out: dict[str, list[tuple[str, frozenset[int]]]] = {}
        for g in space.groups:
            for member, segs in zip(g.members, g.member_segments):
                name, side = member[:-1].split("(")
                units = frozenset(u for s in segs for u in g.segments[s])
                (self._out if side == "out" else self._in).setdefault(name, []).append((g.id, units))
        self._depthwise = {
            name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
        }
        self.total = float(sum(self._layer_macs.values()))

    def flops(self, plan: Plan) -> float:
        kept = {gid: set(g.keep) for gid, g in plan.groups.items()}

        def fraction(entries: list[tuple[str, frozenset[int]]] | None) -> float:
            """Kept share of a layer's channels. Channels of groups outside the plan count as kept;
            a concat's other inputs (not groups) are unknown here and ignored."""
            if not entries:
                return 1.0
            total = sum(len(units) for _, units in entries)
            return sum(len(units & kept[gid]) if gid in kept else len(units) for gid, units in entries) / total

        total = 0.0
        gone = tuple(b + "." for b in plan.removed_blocks)
        for name, macs in self._layer_macs.items():
            if name.startswith(gone) or name in plan.removed_blocks:
                continue
            f_in = 1.0 if name in self._depthwise else fraction(self._in.get(name))
            total += macs * f_in * fraction(self._out.get(name))
        return total
