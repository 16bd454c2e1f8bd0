"""The pruning space of a model: which groups can be pruned, and which are left whole and why.

Discovery traces the model once (graph.py), asks for every Conv/Linear's coupled channel group and
every attention module's heads, then *probes*: it prunes a little from every candidate group on a
copy and requires the copy to run, keep its output shapes and compute exactly what the original
computes with the removed units silenced (exact.py). A group that fails, or whose coupling the
graph cannot resolve, is left whole with the reason recorded for the report. Failing groups are
isolated by bisection, so a model whose groups all prune cleanly costs one trial, and k bad groups
about k·log2(n) trials.

Everything is bounded by a time limit (default 60 s): what is not analysed or not verified by then
is left whole ("not analysed within 60 s"), so a user's run never hangs here.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.errors import first_line
from edgeprune.pipeline.prune import attention, exact, removal
from edgeprune.pipeline.prune.graph import ROOT_TYPES, Graph, GraphError, Touch
from edgeprune.pipeline.prune.plan import GroupKeep, Plan

#: group id -> one score per unit (channel or head), higher = keep; what a pruning method produces
Scores = dict[str, np.ndarray]
HEADS_SUFFIX = ":heads"
#: how long discovery (graph, groups, probes) may take before what is left is left whole, in seconds
DEFAULT_TIME_LIMIT_S = 60.0


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
    #: every segment must keep the same number of units (a grouped conv's groups, a GroupNorm's
    #: groups, a chunk's parts); `even_by` says which layer asks for it
    even_by: str = ""


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

    #: sets of groups that keep one width (or one fraction) between them: an output format that records
    #: one width for each set (ecosystems/); groups in no set are cut on their own
    tied: tuple[tuple[str, ...], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [dataclasses.asdict(g) for g in self.groups],
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
            "tied": [list(s) for s in self.tied],
        }

    def tied_set(self, gid: str) -> tuple[str, ...] | None:
        """The set of groups `gid` keeps one width with, if any."""
        return next((s for s in self.tied if gid in s), None)

    def constrained(self, sets: Iterable[Iterable[str]], why: str) -> PruningSpace:
        """Only the groups rooted at a layer of `sets` stay (the others left whole because `why`);
        each set of more than one keeps one width, and when one of its groups cannot be cut (left
        whole by the analysis) the whole set stays whole: one width for all."""
        given = [tuple(s) for s in sets]
        found = {g.id: g for g in self.groups}
        whole = [Skipped(g.id, why) for g in self.groups if not any(g.id in s for s in given)]
        kept_ids: list[str] = []
        tied: list[tuple[str, ...]] = []
        for s in given:
            missing = [r for r in s if r not in found]
            present = [r for r in s if r in found]
            if missing and len(s) > 1:
                whole += [Skipped(r, f"tied to {missing[0]}, which is left whole ({why})") for r in present]
                continue
            kept_ids += present
            if len(present) > 1:
                tied.append(tuple(present))
        kept = [g for g in self.groups if g.id in kept_ids]
        return PruningSpace(kept, self.skipped + whole, tuple(tied))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruningSpace:
        def tuples(v: Any) -> Any:
            return tuple(tuples(x) for x in v) if isinstance(v, list) else v

        groups = [Group(**{k: tuples(v) for k, v in g.items()}) for g in d["groups"]]
        tied = d.get("tied", [])
        if tied and all(isinstance(t, str) for t in tied):  # written before several sets: one set
            tied = [tied]
        return cls(groups, [Skipped(**s) for s in d["skipped"]], tuple(tuple(s) for s in tied))


def discover(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    unprunable: Iterable[str] = (),
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
) -> PruningSpace:
    """Find the prunable groups of `model` (not modified). `unprunable` names layers to leave whole."""
    start = time.perf_counter()
    deadline = start + time_limit_s
    late = f"not analysed within the {time_limit_s:g} s analysis time limit"
    try:
        graph = Graph(model, example_inputs, deadline)
    except Exception as err:  # noqa: BLE001 - a model the tracer cannot follow is left whole, not crashed
        return PruningSpace(
            [], [Skipped("(model)", f"the model cannot be traced ({type(err).__name__}: {first_line(err, 160)})")]
        )
    unprunable = set(unprunable)
    outputs = output_layers(model, example_inputs)
    try:
        inexact = removal.inexact_layers(model, example_inputs)
    except Exception as err:  # noqa: BLE001 - the layers could not be tried: none of their channels go
        inexact = {
            (n, side): f"could not be tried alone ({type(err).__name__})"
            for n, m in model.named_modules()
            if isinstance(m, ROOT_TYPES) and type(m) not in removal.STANDARD
            for side in ("in", "out")
        }
    candidates: list[Group] = []
    skipped: list[Skipped] = []
    visited: set[str] = set()  # layers whose output channels already belong to a group
    for name, _layer, size in graph.roots():
        if name in visited:
            continue
        if time.perf_counter() > deadline:
            skipped.append(Skipped(name, late))
            continue
        try:
            touches = graph.coupled(name, range(size))
            visited |= {t.name for t in touches if t.side == "out"}
            units = _independent_units(touches, size)
            if units < size:  # a chunk's parts shrink together: unit u stands for channel u of every part
                touches = graph.coupled(name, range(units))
            group, reason = _channel_group(model, name, units, touches, outputs, unprunable, inexact)
        except GraphError as err:
            visited |= err.reached
            group, reason = None, late if "time limit" in str(err) else str(err)
        except Exception as err:  # noqa: BLE001 - whatever torch-pruning raises leaves this group whole, not the run
            group, reason = (
                None,
                f"its channel coupling cannot be traced ({type(err).__name__}: {first_line(err, 160)})",
            )
        if reason:
            skipped.append(Skipped(name, reason))
        else:
            candidates.append(group)  # type: ignore[arg-type]
    for site in graph.sites:
        group, reason = _heads_group(site, unprunable)
        if reason:
            skipped.append(Skipped(site.name + HEADS_SUFFIX, reason))
        else:
            candidates.append(group)  # type: ignore[arg-type]
    bad, unverified = _failing(model, example_inputs, graph, candidates, deadline)
    skipped += [Skipped(g.id, reason) for g, reason in bad]
    skipped += [Skipped(g.id, f"not verified within the {time_limit_s:g} s analysis time limit") for g in unverified]
    out = {g.id for g, _ in bad} | {g.id for g in unverified}
    return PruningSpace([g for g in candidates if g.id not in out], skipped)


def _channel_group(
    model: nn.Module,
    name: str,
    size: int,
    touches: list[Touch],
    outputs: set[str],
    unprunable: set[str],
    inexact: dict[tuple[str, str], str],
) -> tuple[Group | None, str]:
    """The group rooted at layer `name`, or the reason it is left whole."""
    layers = {t.name for t in touches}
    written = {t.name for t in touches if t.side == "out"}
    if written & outputs:
        return None, f"output layer: its channels are the model's outputs ({sorted(written & outputs)[0]})"
    if unprunable & layers:
        return None, f"contains a layer marked unprunable ({sorted(unprunable & layers)[0]})"
    if size < 2:
        return None, "a single channel"
    coupled = next(_shared_channels(touches), None)
    if coupled:
        return None, (
            f"units {coupled[1]} and {coupled[2]} are one channel of {coupled[0]} (e.g. a GLU's halves "
            "multiplied together): they cannot be removed one at a time"
        )
    for t in touches:
        why = _unsupported(model, t) or inexact.get((t.name, t.side), "")
        if why:
            return None, f"{t.name}: {why}" if (t.name, t.side) in inexact else why
    members, member_segments, segments, even_by = _segments(model, touches, size)
    if any(len(s) < 2 for s in segments) and even_by:
        return None, f"{even_by} leaves one channel per group, which cannot shrink evenly"
    return Group(name, "channels", size, members, member_segments, segments, even_by), ""


def _independent_units(touches: list[Touch], size: int) -> int:
    """How many units the group really has: `size`, unless some channels carry several units (a
    chunk's parts, a GLU's halves, coupled channel i to channel i). When the units then fall into
    classes of equal size whose smallest members are exactly 0..k-1, removing unit u < k removes its
    whole class, so the group is the first k units; otherwise `size` (and the group is refused)."""
    parent = list(range(size))

    def find(u: int) -> int:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for _, u, v in _shared_channels(touches):
        a, b = find(u), find(v)
        if a != b:
            parent[max(a, b)] = min(a, b)
    classes: dict[int, int] = {}
    for u in range(size):
        classes[find(u)] = classes.get(find(u), 0) + 1
    k = len(classes)
    if k < size and sorted(classes) == list(range(k)) and len(set(classes.values())) == 1:
        return k
    return size


def _shared_channels(touches: list[Touch]) -> Iterator[tuple[str, int, int]]:
    """(layer, unit, unit) for each channel of a layer that two units of the group reach."""
    for t in touches:
        first: dict[int, int] = {}
        for i, r in zip(t.idxs, t.roots):
            if first.setdefault(i, r) != r:
                yield t.name, min(r, first[i]), max(r, first[i])


def _unsupported(model: nn.Module, t: Touch) -> str:
    """Why a touched layer makes its group unprunable ('' when it does not)."""
    if t.kind == "convT" and getattr(model.get_submodule(t.name), "groups", 1) > 1:
        return f"grouped transposed convolution {t.name}"
    return ""


def _segments(
    model: nn.Module, touches: list[Touch], size: int
) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...], str]:
    """Members, the units each one touches, and the partition of the units those induce.

    Units touched by the same set of layers form one segment. Most groups are one segment; a concat
    makes one per input and a split or chunk one per output, so that pruning keeps some channels of
    every part (a part pruned to zero width leaves a layer with no channels). A grouped convolution
    or a GroupNorm splits them further by its groups, and those segments must keep equal widths
    (`Group.even_by`), as must a chunk's parts (torch.chunk splits by count).
    """
    owned: dict[str, set[int]] = {}
    signature: dict[int, set[tuple[str, int]]] = {u: set() for u in range(size)}
    even_by = ""
    for t in touches:
        member = f"{t.name}({t.side})"
        owned.setdefault(member, set()).update(t.roots)
        per_group = _per_group(model, t)
        if per_group:
            even_by = even_by or f"{'grouped convolution' if t.kind == 'gconv' else 'GroupNorm'} {t.name}"
        for i, r in zip(t.idxs, t.roots):
            signature[r].add((member, i // per_group if per_group else 0))
    by_sig: dict[frozenset[tuple[str, int]], list[int]] = {}
    for u in range(size):
        by_sig.setdefault(frozenset(signature[u]), []).append(u)
    segments = tuple(tuple(v) for v in by_sig.values())
    if not even_by and len(segments) > 1 and len({len(s) for s in segments}) == 1:
        even_by = "equal parts of a split or concat"
    seg_of = {u: i for i, seg in enumerate(segments) for u in seg}
    members = tuple(owned)
    member_segments = tuple(tuple(sorted({seg_of[u] for u in owned[m]})) for m in members)
    return members, member_segments, segments, even_by


def _per_group(model: nn.Module, t: Touch) -> int:
    """Channels per group of a touched grouped conv or GroupNorm (0 for layers without groups)."""
    layer = model.get_submodule(t.name) if t.kind in ("gconv", "gn") else None
    if isinstance(layer, nn.modules.conv._ConvNd):
        return (layer.out_channels if t.side == "out" else layer.in_channels) // layer.groups
    if isinstance(layer, nn.GroupNorm) and 1 < layer.num_groups < layer.num_channels:
        return layer.num_channels // layer.num_groups
    return 0


def _heads_group(site: attention.AttentionSite, unprunable: set[str]) -> tuple[Group | None, str]:
    if unprunable & {site.name, *site.projections, site.proj}:
        return None, "marked unprunable"
    why = site.heads_prunable
    if why:
        return None, why
    heads = tuple(range(site.num_heads))
    members = (*(f"{p}(out)" for p in site.projections), f"{site.proj}(in)")
    return Group(site.name + HEADS_SUFFIX, "heads", site.num_heads, members, tuple((0,) for _ in members), (heads,)), ""


def through_norm(model: nn.Module, group: Group) -> bool:
    """Whether a group's channels pass a norm that mixes channels (LayerNorm, RMSNorm, a GroupNorm of
    several channels per group): scaling them there is not the same as removing them."""
    for member in group.members:
        try:
            m = model.get_submodule(member.rpartition("(")[0])
        except AttributeError:  # a parameter, not a layer
            continue
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) or (
            isinstance(m, nn.GroupNorm) and m.num_groups != m.num_channels
        ):
            return True
    return False


def output_layers(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> set[str]:
    """Names of layers whose output tensor is returned by the model as is.

    Each layer's output is held until the comparison: once freed, a tensor's id() can be reused by
    a later tensor (the model's own output), which would mark an inner layer as an output layer."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: produced.__setitem__(id(out), (name, out)))
        for name, m in model.named_modules()
        if isinstance(m, ROOT_TYPES)
    ]
    try:
        outs = modelrun.run(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return {produced[id(t)][0] for t in outs if id(t) in produced and produced[id(t)][1] is t}


def probe_plan(groups: Sequence[Group]) -> Plan:
    """Drop about every fourth unit of each segment (at least one), at a different offset in each
    segment: scattered, asymmetric indices expose an index mapping that a contiguous tail, or the
    same pattern in two halves, would not. Segments that must stay even lose the same count."""
    keeps = {}
    for g in groups:
        drop: set[int] = set()
        for j, seg in enumerate(g.segments):
            count = max(1, len(seg) // 4) if len(seg) > 1 else 0
            drop |= {seg[(1 + j % 3 + 4 * k) % len(seg)] for k in range(count)}
        drop = drop or {g.segments[0][0]}
        keeps[g.id] = GroupKeep(g.kind, g.size, tuple(u for u in range(g.size) if u not in drop))
    return Plan(keeps)


def plan_changes(graph: Graph, plan: Plan) -> tuple[removal.Cuts, dict[attention.AttentionSite, list[int]]]:
    """What `plan` removes, in the original model's coordinates: channel cuts per layer, heads per site."""
    touches: list[Touch] = []
    for gid, keep in plan.groups.items():
        if keep.kind == "channels" and keep.removed:
            touches += graph.coupled(gid, keep.removed)
    sites = {s.name + HEADS_SUFFIX: s for s in graph.sites}
    heads = {sites[gid]: keep.removed for gid, keep in plan.groups.items() if keep.kind == "heads" and keep.removed}
    return removal.merge(touches), heads


def pruned_copy(model: nn.Module, cuts: removal.Cuts, heads: dict[attention.AttentionSite, list[int]]) -> nn.Module:
    """A copy of `model` with `cuts` and head removals applied."""
    out = copy.deepcopy(model)
    removal.remove(out, cuts)
    for site, removed in heads.items():
        attention.keep_heads(out, site, [h for h in range(site.num_heads) if h not in set(removed)])
    return out


def silenced_outputs(model: nn.Module, plan: Plan, example_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """What `model` pruned to `plan` must compute: the original with the removed units silenced."""
    cuts, heads = plan_changes(Graph(model, example_inputs), plan)
    return exact.reference_outputs(model, cuts, heads, example_inputs)


def check_plan(model: nn.Module, example_inputs: Sequence[torch.Tensor], graph: Graph, plan: Plan) -> str | None:
    """Why pruning `model` to `plan` is not exact (None when the pruned copy runs, keeps the output
    shapes and equals the original with the removed units silenced)."""
    ref = modelrun.run(model, example_inputs)
    try:
        cuts, heads = plan_changes(graph, plan)
        outs = modelrun.run(pruned_copy(model, cuts, heads), example_inputs)
    except Exception as err:  # noqa: BLE001 - any failure means "this removal is not safe"
        return f"pruning it breaks the model ({type(err).__name__}: {first_line(err, 160)})"
    if modelrun.output_shapes(outs) != modelrun.output_shapes(ref):
        return f"pruning it changes the output shapes to {modelrun.output_shapes(outs)}"
    try:
        expected = exact.reference_outputs(model, cuts, heads, example_inputs)
    except exact.Unverifiable as err:
        return f"its removal cannot be checked exactly: {err}"
    except Exception as err:  # noqa: BLE001
        return f"its removal cannot be checked exactly ({type(err).__name__}: {first_line(err, 160)})"
    if not exact.matches(outs, expected):
        return "pruning it changes what the model computes beyond the removed units (a coupling the graph mis-traces)"
    return None


def verified_plan(model: nn.Module, example_inputs: Sequence[torch.Tensor], plan: Plan) -> tuple[Plan, list[Skipped]]:
    """`plan`, less the groups whose removal is not exact *at this plan* (left whole, with why).

    The probe checked each group at one pattern of removed units; a plan removes others, and groups
    together. Whatever the graph says, a pruned group that cannot be shown to compute the original
    with its units silenced does not ship: the final plan is checked the same way, and failing
    groups are isolated by bisection."""
    graph = Graph(model, example_inputs)
    pruning = [gid for gid, keep in plan.groups.items() if keep.removed]

    def only(gids: list[str]) -> Plan:
        return Plan({gid: keep for gid, keep in plan.groups.items() if gid in gids or not keep.removed})

    bad, _ = _isolate(pruning, lambda gids: check_plan(model, example_inputs, graph, only(gids)), None)
    if not bad:
        return plan, []
    out = {gid for gid, _ in bad}
    kept = {
        gid: (GroupKeep(k.kind, k.size, tuple(range(k.size))) if gid in out else k) for gid, k in plan.groups.items()
    }
    return dataclasses.replace(plan, groups=kept), [
        Skipped(gid, f"at the chosen widths: {reason}") for gid, reason in bad
    ]


def _failing(
    model: nn.Module, example_inputs: Sequence[torch.Tensor], graph: Graph, groups: list[Group], deadline: float
) -> tuple[list[tuple[Group, str]], list[Group]]:
    """The groups whose probe fails, each with the reason, and those not verified before `deadline`."""
    return _isolate(groups, lambda subset: check_plan(model, example_inputs, graph, probe_plan(subset)), deadline)


def _isolate(items: list[Any], reason_of: Any, deadline: float | None) -> tuple[list[tuple[Any, str]], list[Any]]:
    """The items for which `reason_of([item])` is a reason (not None), found by bisection from
    `reason_of(items)`, breadth first; and the items not yet cleared when `deadline` passes.

    Bisection costs about 2k·log2(n/k) trials for k failing items of n, more than n trials once
    most fail (CaiT's talking-heads attention: every head group fails). So once most halves tried
    have failed, a failing set's items are tried one by one instead."""
    bad: list[tuple[Any, str]] = []
    pending: list[tuple[list[Any], bool]] = [(items, False)] if items else []  # (subset, is a half)
    halves = failed = 0
    while pending:
        if deadline is not None and time.perf_counter() > deadline:
            return bad, [item for subset, _ in pending for item in subset]
        subset, is_half = pending.pop(0)
        reason = reason_of(subset)
        halves += is_half
        failed += is_half and reason is not None
        if reason is None:
            continue
        if len(subset) == 1:
            bad.append((subset[0], reason))
        elif halves >= 2 and failed > 0.6 * halves:
            pending += [([item], False) for item in subset]
        else:
            pending += [(subset[: len(subset) // 2], True), (subset[len(subset) // 2 :], True)]
    return bad, []


def nothing_prunable(space: PruningSpace) -> str:
    """Why no plan can prune the model: its layers were all left whole, with the commonest reason."""
    if not space.skipped:
        return "the model has no convolution or linear layer to prune; edgeprune cuts channels, heads and blocks"
    reasons = collections.Counter(s.reason for s in space.skipped)
    reason, n = reasons.most_common(1)[0]
    example = next(s.id for s in space.skipped if s.reason == reason)
    return (
        f"nothing in the model can be pruned: all {len(space.skipped)} layer groups are left whole, {n} of them "
        f"because {reason} (e.g. {example}); see the reasons with "
        "edgeprune.pipeline.prune.space.discover, or free layers named in --unprunable"
    )
