"""Index mappings of a traced graph, built once: which channel of one node is which of the next.

torch-pruning maps a split's k-th part to the k-th node that consumes the split, in the order the
nodes were traced, and infers a concat's input sizes the same way. But one part of a chunk can feed
several nodes and one node can read several parts (a C2f block: `y = cv1(x).chunk(2)`, y[1] feeds
the next bottleneck *and* the concat; a GLU multiplies both halves), so channels went to the wrong
part, or the inference indexed past the parts. And a chunk re-divides whatever it gets by count:
pruning one part alone moves the boundary. So here:

- a split along channels into equal parts couples channel i of every part (they shrink together);
  a split into listed sizes maps each part on its own when the module that ran it holds the sizes
  in one attribute (found while tracing), which the cut updates; otherwise it is broken;
- a concat along channels maps each input edge to its offset, from sizes recorded while tracing
  (`Shapes`, keyed by autograd node and output number, so two parts of one split are told apart);
- a split, concat or slice along another axis (tokens, space) leaves every channel where it is. The
  channel axis is the one whose size is the channel count torch-pruning infers, else axis 1 after a
  convolution and the last axis after a Linear or LayerNorm.

Reshapes, expands and unbinds keep torch-pruning's per-node update functions. Each node is
built on its own; one that fails (torchvision's channel shuffle makes the reshape update divide by
zero) is returned as broken, with the reason, instead of failing the whole graph.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch_pruning as tp
from torch.overrides import TorchFunctionMode
from torch_pruning import _helpers
from torch_pruning.dependency import index_mapping, shape_infer

from edgeprune.errors import first_line

_UPDATES = {
    tp.ops.OPTYPE.RESHAPE: index_mapping.update_reshape_index_mapping,
    tp.ops.OPTYPE.UNBIND: index_mapping.update_unbind_index_mapping,
    tp.ops.OPTYPE.EXPAND: index_mapping.update_expand_index_mapping,
}
#: layers whose outputs carry channels on axis 1 / on the last axis
_CHANNELS_FIRST = (
    torch.nn.modules.conv._ConvNd,
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.GroupNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
)
_CHANNELS_LAST = (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Embedding, torch.nn.RMSNorm)


class Shapes(TorchFunctionMode):
    """While open, records the shape of every tensor an op returns, by (grad_fn, output number), and
    the innermost module whose forward ran each op (`callers`, by grad_fn)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[tuple[Any, int], tuple[int, ...]] = {}
        self.callers: dict[Any, torch.nn.Module] = {}
        self._stack: list[torch.nn.Module] = []

    def __enter__(self) -> Shapes:
        def enter(module: torch.nn.Module, args: Any) -> None:
            self._stack.append(module)

        def leave(module: torch.nn.Module, args: Any, out: Any) -> None:
            self._stack.pop()

        self._hooks = [
            torch.nn.modules.module.register_module_forward_pre_hook(enter),
            torch.nn.modules.module.register_module_forward_hook(leave),
        ]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        super().__exit__(*exc)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                self.shapes[(t.grad_fn, t.output_nr)] = tuple(t.shape)
                if self._stack:
                    self.callers.setdefault(t.grad_fn, self._stack[-1])
        return out


class _Broken(Exception):
    pass


def build(dg: tp.DependencyGraph, recorded: Shapes) -> dict[Any, str]:
    """Set every node's index mappings in `dg`; returns the nodes that could not be mapped, with why."""
    broken: dict[Any, str] = {}
    shapes = recorded.shapes
    nodes = list(dg.module2node.values())
    for node in reversed(nodes):  # the trace went from the outputs back: reversed, producers come first
        if node.type == tp.ops.OPTYPE.SPLIT:
            _guarded(broken, node, lambda: _split(dg, node, recorded.callers.get(node.grad_fn)))  # noqa: B023 - called at once
        elif node.type == tp.ops.OPTYPE.CONCAT:
            _guarded(broken, node, lambda: _concat(dg, node, shapes))  # noqa: B023 - called at once
        elif node.type == tp.ops.OPTYPE.SLICE:
            _guarded(broken, node, lambda: _slice(dg, node))  # noqa: B023 - called at once
    for node in nodes:
        update = _UPDATES.get(node.type)
        if update is not None:
            _guarded(broken, node, lambda: update(dg, node))  # noqa: B023 - called at once
    return broken


def _guarded(broken: dict[Any, str], node: Any, fn: Any) -> None:
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - any failure: this node's channel mapping is unknown
        broken[node] = f"{type(err).__name__}: {first_line(err, 120)}"


def _dim(gf: Any, ndim: int) -> int:
    dim = int(getattr(gf, "_saved_dim", 1))
    dim = dim - 2**64 if dim >= 2**63 else dim  # autograd saves a negative dim as unsigned
    return dim + ndim if dim < 0 else dim


def _channel_axis(dg: tp.DependencyGraph, sources: list[tuple[Any, tuple[int, ...]]]) -> int:
    """The axis that carries channels in tensors of these shapes produced by these nodes: the one
    axis whose size is the channel count torch-pruning infers for each; if that does not decide,
    axis 1 after a convolution and the last axis after a Linear or LayerNorm (the nearest layer up)."""
    axes = set()
    for node, shape in sources:
        channels = shape_infer.infer_out_channels_recursively(dg, node, [0])
        matching = [a for a in range(1, len(shape)) if shape[a] == channels]
        if len(matching) == 1:
            axes.add(matching[0])
    if len(axes) == 1:
        return axes.pop()
    node, shape = sources[0]
    frontier, seen = [node], set[Any]()
    while frontier and len(seen) < 64:
        n = frontier.pop(0)
        if n in seen:
            continue
        seen.add(n)
        if isinstance(n.module, _CHANNELS_FIRST):
            return 1
        if isinstance(n.module, _CHANNELS_LAST) or n.type == tp.ops.OPTYPE.CUSTOMIZED:
            return len(shape) - 1
        frontier += n.inputs
    return 1 if len(shape) >= 4 else len(shape) - 1


def _split(dg: tp.DependencyGraph, node: Any, caller: torch.nn.Module | None) -> None:
    """A split along channels into equal parts (torch.chunk; torch.split by one size) couples channel
    i of every part: the parts must keep equal counts, since the split re-divides the pruned tensor
    by count. A split into listed sizes maps each part on its own when the module that ran it holds
    the sizes in one attribute (MixNet's `splits`), which pruning then updates (`sizes_attr`); a list
    written in the code cannot follow a pruned input: broken."""
    gf = node.grad_fn
    shape = tuple(getattr(gf, "_saved_self_sym_sizes", ()))
    if not shape or len(node.inputs) != 1:
        raise _Broken("the split's input was not recorded")
    dim = _dim(gf, len(shape))
    if dim != _channel_axis(dg, [(node.inputs[0], shape)]):
        node.enable_index_mapping = False  # along tokens or space: every part carries all channels
        return
    if hasattr(gf, "_saved_split_sizes"):
        _listed_split(dg, node, [int(s) for s in gf._saved_split_sizes], caller)
        return
    size = int(gf._saved_split_size)
    if shape[dim] % size:
        raise _Broken(f"a split of {shape[dim]} channels into parts of {size}, the last one shorter")
    parts = shape[dim] // size
    for consumer in dict.fromkeys(node.outputs):  # each consumer once, in trace order
        for there in (d for d in node.dependencies if d.target is consumer):
            there.index_mapping[0] = _PartOf(size)
        for back in (d for d in consumer.dependencies if d.target is node):
            back.index_mapping[0] = _InEveryPart(size, parts)
    node.module.split_sizes = [size] * len(node.outputs)  # what torch-pruning's shape inference reads
    node.module.offsets = [i * size for i in range(parts + 1)]


def _slice(dg: tp.DependencyGraph, node: Any) -> None:
    """A strided slice: off the channel axis every channel stays (Swin's patch merging slices rows
    and columns of an NHWC tensor); on it, torch-pruning's mapping where it has one (axis 1)."""
    gf = node.grad_fn
    shape = tuple(getattr(gf, "_saved_self_sym_sizes", ()))
    if not shape or len(node.inputs) != 1:
        raise _Broken("the slice's input was not recorded")
    axis = _channel_axis(dg, [(node.inputs[0], shape)])
    if _dim(gf, len(shape)) != axis:
        return  # no mapping: channels pass unchanged
    if axis != 1:
        raise _Broken(f"a slice of channels on axis {axis}, which torch-pruning cannot map")
    index_mapping.update_slice_index_mapping(dg, node)


def _listed_split(dg: tp.DependencyGraph, node: Any, sizes: list[int], caller: torch.nn.Module | None) -> None:
    """A split into listed sizes that its module holds in one attribute: each consumer edge mapped to
    the part it reads (autograd's output number), the attribute recorded for the cut."""
    attrs = [a for a, v in vars(caller).items() if isinstance(v, (list, tuple)) and list(v) == sizes] if caller else []
    name = dg._module2name.get(caller)
    if len(attrs) != 1 or name is None:
        raise _Broken(
            "torch.split into listed sizes that no single module attribute holds, which pruning its input "
            "would no longer add up to"
        )
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    for consumer in dict.fromkeys(node.outputs):
        parts = [nr for fn, nr in consumer.grad_fn.next_functions if fn is node.grad_fn]
        forward = [d for d in node.dependencies if d.target is consumer]
        backward = [d for d in consumer.dependencies if d.target is node]
        if not (len(parts) == len(forward) == len(backward)):
            raise _Broken("its graph edges do not match autograd's")
        for nr, there, back in zip(parts, forward, backward):
            there.index_mapping[0] = index_mapping._SplitIndexMapping(offsets[nr : nr + 2], reverse=False)
            back.index_mapping[0] = index_mapping._SplitIndexMapping(offsets[nr : nr + 2], reverse=True)
    node.module.split_sizes = [
        sizes[next(nr for fn, nr in out.grad_fn.next_functions if fn is node.grad_fn)] for out in node.outputs
    ]
    node.module.offsets = offsets
    node.module.sizes_attr = f"{name}.{attrs[0]}" if name else attrs[0]


class _PartOf:
    """A split's input channel -> its index within its part (the same index in every part)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, idxs: list[Any]) -> list[Any]:
        return [_helpers._HybridIndex(idx=i.idx % self.size, root_idx=i.root_idx) for i in idxs]


class _InEveryPart:
    """An index within one part -> that channel of the split's input in every part."""

    def __init__(self, size: int, parts: int) -> None:
        self.size, self.parts = size, parts

    def __call__(self, idxs: list[Any]) -> list[Any]:
        return [
            _helpers._HybridIndex(idx=i.idx + p * self.size, root_idx=i.root_idx)
            for i in idxs
            for p in range(self.parts)
        ]


def _concat(dg: tp.DependencyGraph, node: Any, shapes: dict[tuple[Any, int], tuple[int, ...]]) -> None:
    """A concat along channels: each input edge mapped to its offset, from the recorded sizes (an
    input no op recorded, e.g. an attention stand-in's output, by torch-pruning's inference)."""
    gf = node.grad_fn
    entries = [(fn, nr) for fn, nr in gf.next_functions if fn is not None]
    out_shape = shapes.get((gf, 0))
    by_fn = {n.grad_fn: n for n in node.inputs}
    if out_shape is None or any(fn not in by_fn and (fn, nr) not in shapes for fn, nr in entries):
        raise _Broken("the concat's input shapes were not recorded")
    dim = _dim(gf, len(out_shape))
    recorded = [(by_fn[fn], shapes[(fn, nr)]) for fn, nr in entries if fn in by_fn and (fn, nr) in shapes]
    if dim != _channel_axis(dg, recorded or [(node.inputs[0], out_shape)]):
        node.enable_index_mapping = False  # along tokens or space: every input carries all channels
        return
    sizes = [
        shapes[(fn, nr)][dim] if (fn, nr) in shapes else shape_infer.infer_out_channels_recursively(dg, by_fn[fn], [0])
        for fn, nr in entries
    ]
    if None in sizes or sum(sizes) != out_shape[dim]:
        raise _Broken("the concat's input sizes do not add up to its output")
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    by_source: dict[Any, list[tuple[int, int]]] = {}
    for (fn, _nr), (start, end) in zip(entries, itertools.pairwise(offsets)):
        by_source.setdefault(fn, []).append((start, end))
    for source in dict.fromkeys(node.inputs):
        spans = by_source.get(source.grad_fn, [])
        forward = [d for d in source.dependencies if d.target is node]
        backward = [d for d in node.dependencies if d.target is source]
        if not (len(spans) == len(forward) == len(backward)):
            raise _Broken("its graph edges do not match autograd's")
        for span, there, back in zip(spans, forward, backward):
            there.index_mapping[1] = index_mapping._ConcatIndexMapping(list(span), reverse=False)
            back.index_mapping[1] = index_mapping._ConcatIndexMapping(list(span), reverse=True)
    node.module.concat_sizes = sizes
    node.module.offsets = offsets
