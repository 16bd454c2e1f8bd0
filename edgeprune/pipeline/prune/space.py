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

import torch
from torch import nn

from edgeprune.pipeline.prune import attention, graph
from edgeprune.pipeline.prune.apply import HEADS_SUFFIX, apply
from edgeprune.pipeline.prune.plan import GroupKeep, Plan


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
    outputs = _output_layers(model, example_inputs)
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

    Units that every producing layer shares form one segment; a concat splits the group into one
    segment per input, so that pruning can keep some channels of every input (an input pruned to
    zero width would leave a layer with no channels).
    """
    owned: dict[str, set[int]] = {}
    for item in group:
        name = graph.module_name(dg, item.dep.target.module)
        if name is not None:
            side = "out" if dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
            owned.setdefault(f"{name}({side})", set()).update(int(i) for i in item.root_idxs)
    signature: dict[int, tuple[str, ...]] = {
        u: tuple(n for n, idx in owned.items() if n.endswith("(out)") and u in idx) for u in range(size)
    }
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


def _output_layers(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> set[str]:
    """Names of layers whose output tensor is returned by the model as is."""
    produced: dict[int, str] = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: produced.__setitem__(id(out), name))
        for name, m in model.named_modules()
        if isinstance(m, graph.ROOT_TYPES)
    ]
    try:
        outs = graph.run(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return {produced[id(t)] for t in outs if id(t) in produced}


def probe_plan(groups: Sequence[Group]) -> Plan:
    """Drop every fourth unit of each segment (at least one): scattered indices in every coupled
    layer exercise the index mapping that a contiguous tail would not."""
    keeps = {}
    for g in groups:
        drop = {seg[i] for seg in g.segments for i in range(1, len(seg), 4)} or {g.segments[0][0]}
        keeps[g.id] = GroupKeep(g.kind, g.size, tuple(u for u in range(g.size) if u not in drop))
    return Plan(keeps)


def _failing(model: nn.Module, example_inputs: Sequence[torch.Tensor], groups: list[Group]) -> list[tuple[Group, str]]:
    ref = graph.output_shapes(graph.run(model, example_inputs))

    def trial(subset: list[Group]) -> str | None:
        candidate = copy.deepcopy(model)
        try:
            apply(candidate, probe_plan(subset), example_inputs, check=False)
            outs = graph.run(candidate, example_inputs)
        except Exception as err:  # noqa: BLE001 - any failure means "leave this group whole"
            return f"pruning it breaks the model ({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})"
        if graph.output_shapes(outs) != ref:
            return f"pruning it changes the output shapes to {graph.output_shapes(outs)}"
        if not all(torch.isfinite(t).all() for t in outs if t.is_floating_point()):
            return "pruning it makes the outputs non-finite"
        return None

    return _bisect(groups, trial)


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
