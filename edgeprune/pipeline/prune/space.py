"""The pruning space of a model: which groups can be pruned, and which are left whole and why.

Discovery asks torch-pruning's DependencyGraph for the coupled channel groups, adds attention heads,
then *probes*: it prunes a little from every candidate group on a copy and runs it. A group whose
pruning crashes, changes the output shapes or produces non-finite values is left whole, with the
reason recorded for the report. Failing groups are isolated by bisection, so a model whose groups all
prune cleanly costs one trial, and k bad groups about k·log2(n) trials.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.errors import first_line
from edgeprune.pipeline.prune import attention, graph
from edgeprune.pipeline.prune.apply import HEADS_SUFFIX, apply
from edgeprune.pipeline.prune.plan import GroupKeep, Plan


#: group id -> one score per unit (channel or head), higher = keep; what a pruning method produces
Scores = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Group:
    """A set of coupled units that must be removed together."""

    id: str  # root module name, or "<attention module>:heads"
    kind: str  # "channels" | "heads"
    size: int
    members: tuple[str, ...]  # coupled layers, "name(out)" / "name(in)"
    #: which units each member touches, as indices into `segments` (parallel to `members`)
    member_segments: tuple[tuple[int, ...], ...] = ()
    #: a partition of the units: a concat's inputs each own one segment; most groups have one
    segments: tuple[tuple[int, ...], ...] = ()


@dataclasses.dataclass(frozen=True)
class Skipped:
    id: str
    reason: str


@dataclasses.dataclass
class PruningSpace:
    groups: list[Group]
    skipped: list[Skipped]

    def get(self, gid: str) -> Group:
        return next(g for g in self.groups if g.id == gid)

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [dataclasses.asdict(g) for g in self.groups],
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruningSpace":
        def tuples(v: Any) -> Any:
            return tuple(tuples(x) for x in v) if isinstance(v, list) else v

        groups = [Group(**{k: tuples(v) for k, v in g.items()}) for g in d["groups"]]
        return cls(groups, [Skipped(**s) for s in d["skipped"]])


def discover(
    model: nn.Module, example_inputs: Sequence[torch.Tensor], unprunable: Iterable[str] = ()
) -> PruningSpace:
    """Find the prunable groups of `model` (not modified). `unprunable` names layers to leave whole."""
    unprunable = set(unprunable)
    dg = graph.build_graph(model, example_inputs)
    sites = attention.find_attention(model)
    fused_qkv = {id(s.qkv) for s in sites}
    outputs = output_layers(model, example_inputs)
    candidates: list[Group] = []
    skipped: list[Skipped] = []
    visited: set[str] = set()  # layers whose output channels already belong to a group
    for m in list(dg.module2node.keys()):
        if not isinstance(m, graph.ROOT_TYPES) or id(m) in fused_qkv:
            continue
        name = graph.module_name(dg, m)
        size = graph.out_channels(dg, m)
        if name is None or not size or name in visited:
            continue
        members, member_segments, segments = _members(dg, graph.group_of(dg, m, range(size)), size)
        visited |= {n[: -len("(out)")] for n in members if n.endswith("(out)")}
        grouped = _grouped_conv(model, members)
        if name in outputs:
            skipped.append(Skipped(name, "output layer: its channels are the model's outputs"))
        elif grouped:
            skipped.append(Skipped(name, f"grouped convolution {grouped}: channels would have to go evenly per group"))
        elif unprunable & {n.split("(")[0] for n in members}:
            skipped.append(Skipped(name, "contains a layer marked unprunable"))
        elif size < 2:
            skipped.append(Skipped(name, "a single channel"))
        else:
            candidates.append(Group(name, "channels", size, members, member_segments, segments))
    for s in sites:
        gid = s.name + HEADS_SUFFIX
        if unprunable & {s.name, f"{s.name}.qkv", f"{s.name}.proj"}:
            skipped.append(Skipped(gid, "marked unprunable"))
        elif s.num_heads < 2:
            skipped.append(Skipped(gid, "a single head"))
        else:
            heads = tuple(range(s.num_heads))
            candidates.append(Group(gid, "heads", s.num_heads, (f"{s.name}.qkv(out)", f"{s.name}.proj(in)"), ((0,), (0,)), (heads,)))
    bad = _failing(model, example_inputs, candidates)
    skipped += [Skipped(g.id, reason) for g, reason in bad]
    bad_ids = {g.id for g, _ in bad}
    return PruningSpace([g for g in candidates if g.id not in bad_ids], skipped)


def _members(
    dg: Any, group: Any, size: int
) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Named layers of a group, the units each one touches, and the partition those induce.

    Units touched by the same set of layers form one segment. Most groups are one segment; a concat
    makes one per input and a split or chunk one per output, so that pruning keeps some channels of
    every part (a part pruned to zero width leaves a layer with no channels) and, for a chunk, the
    same number in each part (torch.chunk splits by count, so unequal parts would silently mix
    channels).
    """
    owned: dict[str, set[int]] = {}
    for item in group:
        module = item.dep.target.module
        name = graph.module_name(dg, module) if isinstance(module, nn.Module) else None
        if name is not None:
            side = "out" if dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
            owned.setdefault(f"{name}({side})", set()).update(int(i) for i in item.root_idxs)
    signature: dict[int, tuple[str, ...]] = {u: tuple(n for n, idx in owned.items() if u in idx) for u in range(size)}
    by_sig: dict[tuple[str, ...], list[int]] = {}
    for u in range(size):
        by_sig.setdefault(signature[u], []).append(u)
    segments = tuple(tuple(v) for v in by_sig.values())
    seg_of = {u: i for i, seg in enumerate(segments) for u in seg}
    members = tuple(owned)
    member_segments = tuple(tuple(sorted({seg_of[u] for u in owned[n]})) for n in members)
    return members, member_segments, segments


def _grouped_conv(model: nn.Module, members: Sequence[str]) -> str | None:
    """The first grouped (not depthwise) conv in a group: torch-pruning removes its channels unevenly."""
    for member in members:
        m = model.get_submodule(member.split("(")[0])
        if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups and not (m.groups == m.in_channels == m.out_channels):
            return f"{member.split('(')[0]} (groups={m.groups})"
    return None


def output_layers(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> set[str]:
    """Names of layers whose output tensor is returned by the model as is.

    Each layer's output is held until the comparison: once freed, a tensor's id() can be reused by
    a later tensor (the model's own output), which would mark an inner layer as an output layer."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: produced.__setitem__(id(out), (name, out)))
        for name, m in model.named_modules()
        if isinstance(m, graph.ROOT_TYPES)
    ]
    try:
        outs = modelrun.run(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return {produced[id(t)][0] for t in outs if id(t) in produced and produced[id(t)][1] is t}


def probe_plan(groups: Sequence[Group]) -> Plan:
    """Drop every fourth unit of each segment (at least one), at a different offset in each segment:
    scattered, asymmetric indices expose an index mapping that a contiguous tail, or the same
    pattern in two halves, would not."""
    keeps = {}
    for g in groups:
        drop = {seg[i] for j, seg in enumerate(g.segments) for i in range(1 + j % 3, len(seg), 4)} or {g.segments[0][0]}
        keeps[g.id] = GroupKeep(g.kind, g.size, tuple(u for u in range(g.size) if u not in drop))
    return Plan(keeps)


def _failing(model: nn.Module, example_inputs: Sequence[torch.Tensor], groups: list[Group]) -> list[tuple[Group, str]]:
    """The groups whose probe fails, each with the reason.

    Every group must keep the model running with its output shapes and finite outputs. Where it can
    be checked exactly, the pruned model must also compute what the original computes with the
    dropped units silenced: a channel whose producing filters, biases and BN affine are zeroed is
    exactly zero downstream, and a head whose proj columns are zeroed contributes nothing. That
    catches the silent failures: torch-pruning mapping a chunk's halves to the wrong consumers, or an
    attention module whose reshape ignores `num_heads`. Groups through cross-channel norms
    (LayerNorm, GroupNorm), where silencing is not removal, get the shape checks only.
    """
    ref = modelrun.output_shapes(modelrun.run(model, example_inputs))

    def trial(subset: list[Group], exact: bool) -> str | None:
        plan = probe_plan(subset)
        candidate = copy.deepcopy(model)
        try:
            apply(candidate, plan, example_inputs, check=False)
            outs = modelrun.run(candidate, example_inputs)
        except Exception as err:  # noqa: BLE001 - any failure means "leave this group whole"
            return f"pruning it breaks the model ({type(err).__name__}: {first_line(err, 160)})"
        if modelrun.output_shapes(outs) != ref:
            return f"pruning it changes the output shapes to {modelrun.output_shapes(outs)}"
        if not all(torch.isfinite(t).all() for t in outs if t.is_floating_point()):
            return "pruning it makes the outputs non-finite"
        if exact:
            expected = modelrun.run(silenced(model, plan, example_inputs), example_inputs)
            if not all(torch.allclose(o, e, rtol=1e-3, atol=1e-4) for o, e in zip(outs, expected)):
                return "pruning it changes what the model computes beyond the removed units (a coupling the graph mis-traces)"
        return None

    exact = [g for g in groups if not through_norm(model, g)]
    shape_only = [g for g in groups if through_norm(model, g)]
    return _bisect(exact, lambda sub: trial(sub, True)) + _bisect(shape_only, lambda sub: trial(sub, False))


def through_norm(model: nn.Module, group: Group) -> bool:
    """Whether a group's channels pass a norm that mixes channels (silencing is then not removal)."""
    for member in group.members:
        m = model.get_submodule(member.split("(")[0])
        if isinstance(m, nn.LayerNorm) or (isinstance(m, nn.GroupNorm) and m.num_groups != m.num_channels):
            return True
    return False


def silenced(model: nn.Module, plan: Plan, example_inputs: Sequence[torch.Tensor]) -> nn.Module:
    """A copy of `model` in which every unit `plan` removes is forced to contribute nothing.

    Channels: the producing layers' filters, biases and BN affine parameters are zeroed. Heads: their
    columns of the output projection are zeroed. Physical removal must compute the same function.
    """
    quiet = copy.deepcopy(model)
    channel_groups = {gid: k for gid, k in plan.groups.items() if k.kind == "channels" and k.removed}
    with torch.no_grad():
        if channel_groups:
            dg = graph.build_graph(quiet, example_inputs)
            for gid, keep in channel_groups.items():
                for item in graph.group_of(dg, quiet.get_submodule(gid), keep.removed):
                    layer = item.dep.target.module
                    if dg.is_out_channel_pruning_fn(item.dep.handler) and isinstance(getattr(layer, "weight", None), torch.Tensor):
                        idx = [getattr(i, "idx", i) for i in item.idxs]
                        layer.weight[idx] = 0
                        if getattr(layer, "bias", None) is not None:
                            layer.bias[idx] = 0
        sites = {s.name + HEADS_SUFFIX: s for s in attention.find_attention(quiet)}
        for gid, keep in plan.groups.items():
            if keep.kind == "heads":
                for h in keep.removed:
                    sites[gid].proj.weight[:, sites[gid].head_cols(h)] = 0
    return quiet


def _bisect(groups: list[Group], trial: Callable[[list[Group]], str | None]) -> list[tuple[Group, str]]:
    if not groups:
        return []
    reason = trial(groups)
    if reason is None:
        return []
    if len(groups) == 1:
        return [(groups[0], reason)]
    mid = len(groups) // 2
    return _bisect(groups[:mid], trial) + _bisect(groups[mid:], trial)
