"""The coupling graph of a model: torch-pruning's DependencyGraph, traced once, queried with bounds.

torch-pruning traces a forward pass and links every layer whose channels must shrink together
(residual adds, concats, splits, norms). edgeprune uses that graph, but not its group query as is:

- **One trace, one index-mapping pass** (_mappings.py). `DependencyGraph.get_pruning_group` rebuilds
  every concat/split/reshape index mapping on each call; discovery asks for one group per layer.
  The mappings are built once, node by node, splits from autograd's own record of which part each
  consumer reads; a node whose mapping raises (torchvision's channel shuffle: ZeroDivisionError) is
  recorded as broken, and only the groups that pass through it are left whole.
- **A bounded query** (`Graph.coupled`). torch-pruning's traversal re-enters a node whenever the
  index *list* differs, and reshape mappings return unordered sets, so on window attention it
  enumerated paths without end (torchvision swin_t, maxvit_t, YOLO11n). Here each (node, handler)
  keeps the set of (channel, unit) pairs it has seen and only new pairs travel on: every mapping
  maps indices one by one, so this reaches the same set, in time linear in its size. A query that
  goes past a work limit or the caller's deadline, maps an index out of a layer's range, or loses
  the unit an index came from, raises `GraphError`, and that group is left whole with the reason.
- **Attention modules are opaque.** While tracing, each attention module (attention.py) is replaced
  by a stand-in whose output depends on its input through one autograd node, so the graph never
  follows q·kᵀ and softmax as if they were channel-wise (torch-pruning treats unknown ops as
  element-wise, which coupled q, k, v and the sequence axis). The stand-in's input channels are its
  projections' input columns, its output channels the output projection's rows; heads are
  attention.py's business.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers
from torch_pruning.dependency import shape_infer

from edgeprune import modelrun
from edgeprune.errors import first_line
from edgeprune.pipeline.prune import _mappings
from edgeprune.pipeline.prune.attention import WIDTH_NAME, AttentionSite, find_attention, projection

#: layer types whose output channels start a pruning group
ROOT_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
#: (channel, unit) pairs one coupling query may visit before it is declared unresolvable
WORK_LIMIT = 4_000_000
#: a layer's channel carries one unit, a few where parts pair up (chunks); more is a mis-traced reshape
UNITS_PER_CHANNEL = 4


class GraphError(Exception):
    """A coupling the graph cannot resolve safely; the message says why (one line). `reached` names
    the layers whose output channels the failed query had reached (set by `Graph.coupled`)."""

    reached: frozenset[str] | set[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class Touch:
    """The channels of one named layer (or parameter) that a group's units reach."""

    name: str  # module path, or parameter path for a parameter outside any known layer
    side: str  # "out": the layer writes these channels; "in": it reads them
    kind: str  # conv, gconv (grouped), dwconv, convT, linear, bn, ln, gn, inorm, rms, embed, prelu, param, lstm, mha,
    #            other; sizes: a module attribute listing a split's part sizes, width: a module attribute holding a
    #            reshape's channel count (name is "module.attribute" for both)
    idxs: tuple[int, ...]  # the layer's channel indices
    roots: tuple[int, ...]  # the group unit each of those indices carries (parallel to idxs)
    dim: int = -1  # for "param": the dimension its channels are on


class _Stand(nn.Module):
    """Takes an attention module's place while tracing: runs it without autograd, then links its
    output to its inputs through a single autograd node (`_Link`), so the graph sees one op."""

    inner: nn.Module  # the attention module, set past nn.Module's registration (see __init__)

    def __init__(self, site: AttentionSite, module: nn.Module, out_channels: int | None) -> None:
        super().__init__()
        object.__setattr__(self, "inner", module)  # not a registered child: its layers stay hidden
        self.site = site
        self.in_channels = site.input_dim if site.aligned_inputs else None
        self.out_channels = out_channels

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            out = self.inner(*args, **kwargs)
        sources = [t for t in _tensors((args, kwargs)) if t.requires_grad]
        first = out[0] if isinstance(out, tuple) else out
        linked = _Link.apply(first, *sources)
        return (linked, *out[1:]) if isinstance(out, tuple) else linked


class _Link(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, *sources: torch.Tensor) -> torch.Tensor:
        ctx.n = len(sources)
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # never run: the graph only reads grad_fn links
        return (None, *[None] * ctx.n)


class _StandPruner(tp.pruner.function.BasePruningFunc):
    """Channel counts of a stand-in; its in and out channels are independent (no intra-layer coupling)."""

    TARGET_MODULES = _Stand

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer

    def get_out_channels(self, layer: _Stand) -> int | None:
        return layer.out_channels

    def get_in_channels(self, layer: _Stand) -> int | None:
        return layer.in_channels


class _RMSNormPruner(tp.pruner.function.BasePruningFunc):
    """nn.RMSNorm is not one of torch-pruning's layers: per-channel like LayerNorm's affine."""

    TARGET_MODULES = nn.RMSNorm

    def prune_out_channels(self, layer: nn.RMSNorm, idxs: Sequence[int]) -> nn.Module:
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.RMSNorm) -> int:
        return layer.normalized_shape[-1]

    get_in_channels = get_out_channels


class Graph:
    """The traced coupling graph of `model` (which it does not modify) and its attention sites."""

    def __init__(self, model: nn.Module, example_inputs: Sequence[torch.Tensor], deadline: float | None = None) -> None:
        self.model = model
        self.deadline = deadline
        sites = find_attention(model, example_inputs)
        self.dg = tp.DependencyGraph()
        self.dg.verbose = False
        self.dg.register_customized_layer(_Stand, _StandPruner())
        self.dg.register_customized_layer(nn.RMSNorm, _RMSNormPruner())
        stands = {s.name: _Stand(s, model.get_submodule(s.name), _out_channels(model, s)) for s in sites if s.name}
        with _swapped(model, stands):
            self.dg.model = model
            self.dg._module2name = {m: n for n, m in model.named_modules()}
            self.dg.ignored_params = []
            self.dg._param_to_name, self.dg.unwrapped_parameters = self.dg._detect_unwrapped_parameters(None)
            recorder = _mappings.Shapes()
            with torch.inference_mode(False), torch.enable_grad(), modelrun.trainable(model), recorder:
                self.dg.module2node = self.dg._trace(model, tuple(example_inputs), None, output_transform=None)
            self.dg._build_dependency(self.dg.module2node)
        _detach_caches(model)
        self.broken = _mappings.build(self.dg, recorder)
        self.callers = recorder.callers
        self._stands = {id(s): s for s in stands.values()}
        #: the widest layer's channel count: no channel set between layers is wider in a sound mapping
        self._widest = max(
            [
                1,
                *(
                    int(c)
                    for m in self.dg.module2node
                    if isinstance(m, ROOT_TYPES)
                    for c in (m.weight.shape[0], m.weight.shape[1] * getattr(m, "groups", 1))
                ),
            ]
        )
        self.sites = [self._resolved(s, stands.get(s.name)) for s in sites]

    # ----------------------------------------------------------------------------------- lookups

    def name(self, module: Any) -> str | None:
        """The path of a traced module or parameter (None for graph-internal ops)."""
        if isinstance(module, nn.Parameter):
            return self.dg._param_to_name.get(module)
        return self.dg._module2name.get(module)  # torch-pruning keeps no public accessor for this map

    def roots(self) -> list[tuple[str, nn.Module, int]]:
        """(name, layer, output channels) of every traced Conv/Linear, in the graph's order."""
        out = []
        for m in self.dg.module2node:
            if isinstance(m, ROOT_TYPES) and not isinstance(m, _Stand):
                name = self.name(m)
                size = self.dg.get_pruner_of_module(m).get_out_channels(m)
                if name is not None and size:
                    out.append((name, m, int(size)))
        return out

    def out_channels(self, name: str) -> int:
        layer = self.model.get_submodule(name)
        return int(self.dg.get_pruner_of_module(layer).get_out_channels(layer))

    def inputs_of(self, name: str) -> list[str]:
        """Names of the traced layers whose output feeds layer `name` directly."""
        node = self.dg.module2node[self.model.get_submodule(name)]
        return [n for n in (self.name(i.module) for i in node.inputs) if n is not None]

    def feeds(self, name: str, into: Iterable[str]) -> bool:
        """Whether layer `name`'s output goes straight into one of the layers `into`."""
        node = self.dg.module2node[self.model.get_submodule(name)]
        return any(self.name(o.module) in set(into) for o in node.outputs)

    # ---------------------------------------------------------------------------------- coupling

    def coupled(self, root: str, units: Iterable[int]) -> list[Touch]:
        """Every named layer whose channels removing output channels `units` of layer `root` removes,
        each with the units its channels carry. Raises GraphError when that cannot be told safely."""
        module = self.model.get_submodule(root)
        if module not in self.dg.module2node:
            raise GraphError(f"{root} is not on the traced path from the inputs to the outputs")
        start_node = self.dg.module2node[module]
        start = [_helpers._HybridIndex(idx=int(u), root_idx=int(u)) for u in units]
        handler = self.dg.get_pruner_of_module(module).prune_out_channels
        seen: dict[tuple[Any, Any], set[Any]] = {(start_node, handler): set(start)}
        try:
            self._walk(start_node, handler, start, seen)
        except GraphError as err:
            # the layers written so far share the failing coupling: their own queries would fail alike
            names = (self.name(n.module) for (n, fn), p in seen.items() if p and self.dg.is_out_channel_pruning_fn(fn))
            err.reached = {name for name in names if name is not None}
            raise
        return [t for (node, fn), pairs in seen.items() if pairs for t in self._touches(node, fn, pairs)]

    def _walk(self, start_node: Any, handler: Any, start: list[Any], seen: dict[tuple[Any, Any], set[Any]]) -> None:
        """Carry (channel, unit) pairs along the dependencies from the root until nothing new arrives."""
        stack = [(start_node, handler, start)]
        work = len(start)
        while stack:
            node, fn, pairs = stack.pop()
            if node in self.broken:
                raise GraphError(
                    f"it passes through {_describe(node)}, whose channel mapping cannot be traced ({self.broken[node]})"
                )
            for dep in node.dependencies:
                if not dep.is_triggered_by(fn):
                    continue
                fresh = self._fresh(dep, pairs, seen.setdefault((dep.target, dep.handler), set()))
                if not fresh:
                    continue
                work += len(fresh)
                if work > WORK_LIMIT:
                    raise GraphError(
                        f"its channel coupling does not resolve within {WORK_LIMIT:,} index steps "
                        f"(a reshape the graph cannot map, near {_describe(dep.target)})"
                    )
                if self.deadline is not None and time.perf_counter() > self.deadline:
                    raise GraphError("not analysed within the time limit")
                stack.append((dep.target, dep.handler, fresh))

    def _fresh(self, dep: Any, pairs: list[Any], seen: set[Any]) -> list[Any]:
        """The (channel, unit) pairs `dep` carries `pairs` to that its target has not seen yet (added
        to `seen`); an index outside the target's channels means the mapping is wrong: stop there."""
        mapped = pairs
        try:
            for mapping in dep.index_mapping:
                if mapping is not None:
                    mapped = mapping(mapped)
        except Exception as err:  # noqa: BLE001 - torch-pruning's mappings fail on shapes they do not expect
            raise GraphError(
                f"the graph cannot map channels into {_describe(dep.target)} "
                f"({type(err).__name__}: {first_line(err, 120)})"
            ) from None
        fresh = [p for p in set(mapped) if p not in seen]
        if not fresh:
            return fresh
        if dep.target.type == tp.ops.OPTYPE.OUTPUT:
            raise GraphError("its channels are channels of the model's outputs")
        side_out = self.dg.is_out_channel_pruning_fn(dep.handler)
        size = self.dg.get_out_channels(dep.target) if side_out else self.dg.get_in_channels(dep.target)
        if size is not None and any(not 0 <= p.idx < size for p in fresh):
            raise GraphError(
                f"the graph maps channels out of the range of {_describe(dep.target)} "
                f"({'out' if side_out else 'in'}, {size} channels): a reshape it cannot follow"
            )
        seen.update(fresh)
        if len(seen) > UNITS_PER_CHANNEL * (size or self._widest):  # an op between layers has no width of its own
            raise GraphError(
                f"the graph couples each channel of {_describe(dep.target)} to many units: a reshape it cannot follow"
            )
        return fresh

    def _touches(self, node: Any, fn: Any, pairs: set[Any]) -> list[Touch]:
        side = "out" if self.dg.is_out_channel_pruning_fn(fn) else "in"
        if any(p.root_idx is None for p in pairs):
            raise GraphError(f"the graph loses track of which channels map where at {_describe(node)}")
        module = node.module
        name = self.name(module)
        ordered = sorted(pairs)
        idxs, roots = tuple(p.idx for p in ordered), tuple(p.root_idx for p in ordered)
        if getattr(module, "sizes_attr", None):  # a split whose part sizes a module attribute holds
            return [Touch(module.sizes_attr, "in", "sizes", idxs, roots)]
        if node.type == tp.ops.OPTYPE.RESHAPE:
            return self._width_touches(node, roots)
        if name is None:
            return []  # an op between layers (add, concat): nothing to prune there
        if isinstance(module, _Stand):
            return self._site_touches(module, side, idxs, roots)
        kind = _kind(module)
        return [Touch(name, side, kind, idxs, roots, node.pruning_dim if kind == "param" else -1)]

    def _width_touches(self, node: Any, roots: tuple[int, ...]) -> list[Touch]:
        """A reshape whose module holds its channel count in an integer attribute (torchvision's ViT
        reshapes its patch embedding with `self.hidden_dim`): that attribute shrinks with the group.
        Only the count matters, so the indices are positions. An attribute the module uses otherwise
        fails the exact probe, and the group is left whole."""
        caller = self.callers.get(node.grad_fn)
        if caller is None:
            return []
        channels = shape_infer.infer_out_channels_recursively(self.dg, node, [0])
        path = self.dg._module2name.get(caller)
        if path is None or not channels:
            return []
        attrs = [a for a, v in vars(caller).items() if type(v) is int and v == channels and WIDTH_NAME.search(a)]
        return [Touch(f"{path}.{a}" if path else a, "in", "width", tuple(range(len(roots))), roots) for a in attrs]

    def _site_touches(self, stand: _Stand, side: str, idxs: tuple[int, ...], roots: tuple[int, ...]) -> list[Touch]:
        """An attention module's channels are its projections' input columns and its output projection's rows."""
        site = stand.site
        if side == "in":
            if not site.aligned_inputs:
                raise GraphError(f"{site.name} projects inputs of different widths: its input channels are left whole")
            return [Touch(p, "in", "linear", idxs, roots) for p in site.projections]
        if site.proj is None or not site.proj.startswith(site.name + "."):
            raise GraphError(f"the output of {site.name} is the heads themselves: its channels go with its heads")
        return [Touch(site.proj, "out", "linear", idxs, roots)]

    def _resolved(self, site: AttentionSite, stand: _Stand | None) -> AttentionSite:
        """The site with its output projection, when that Linear follows the module (BERT's output.dense)."""
        if site.proj is not None or stand is None or stand not in self.dg.module2node:
            return site
        frontier, reached = list(self.dg.module2node[stand].outputs), set()
        while frontier:
            node = frontier.pop()
            if node in reached:
                continue
            reached.add(node)
            if isinstance(node.module, nn.Linear):
                name = self.name(node.module)
                if name is not None and node.module.in_features == site.inner and len(reached) <= 8:
                    return site.with_proj(name)
                continue
            if self.name(node.module) is None:  # an op (dropout is no node in eval): look further
                frontier += node.outputs
        return site


def _out_channels(model: nn.Module, site: AttentionSite) -> int | None:
    inside = site.proj is not None and site.proj.startswith(site.name + ".")
    return projection(model, site.proj).out_features if inside else None


class _swapped:
    """Put the stand-ins in their modules' places for the duration of a trace."""

    def __init__(self, model: nn.Module, stands: dict[str, _Stand]) -> None:
        self.model, self.stands = model, stands
        self.saved: dict[str, nn.Module] = {}

    def __enter__(self) -> None:
        for name, stand in self.stands.items():
            parent, _, leaf = name.rpartition(".")
            owner = self.model.get_submodule(parent)
            self.saved[name] = getattr(owner, leaf)
            setattr(owner, leaf, stand)

    def __exit__(self, *exc: Any) -> None:
        for name, module in self.saved.items():
            parent, _, leaf = name.rpartition(".")
            setattr(self.model.get_submodule(parent), leaf, module)


def _detach_caches(model: nn.Module) -> None:
    """Tensors a module cached during the (autograd-enabled) trace, detached: equal values, but no
    longer graph nodes, which deepcopy refuses (timm's EfficientViT keeps its attention bias so)."""
    for m in model.modules():
        for attr, value in vars(m).items():
            if attr.startswith("_") and attr in ("_parameters", "_buffers", "_modules"):
                continue
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                setattr(m, attr, value.detach())
            elif isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(v, torch.Tensor) and v.grad_fn is not None:
                        value[k] = v.detach()


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _describe(node: Any) -> str:
    name = node._name
    return name if name else f"a {type(node.module).__name__.strip('_')} op"


def _kind(module: Any) -> str:
    if isinstance(module, nn.Parameter):
        return "param"
    if isinstance(module, tp.ops.TORCH_CONV):
        if module.transposed:
            return "convT"
        if tp.ops.module2type(module) == tp.ops.OPTYPE.DEPTHWISE_CONV:
            return "dwconv"
        return "gconv" if module.groups > 1 else "conv"
    kinds = (
        (nn.Linear, "linear"),
        (nn.modules.batchnorm._BatchNorm, "bn"),
        (nn.LayerNorm, "ln"),
        (nn.GroupNorm, "gn"),
        (nn.modules.instancenorm._InstanceNorm, "inorm"),
        (nn.RMSNorm, "rms"),
        (nn.Embedding, "embed"),
        (nn.PReLU, "prelu"),
        (nn.LSTM, "lstm"),
        (nn.MultiheadAttention, "mha"),
    )
    return next((k for t, k in kinds if isinstance(module, t)), "other")
