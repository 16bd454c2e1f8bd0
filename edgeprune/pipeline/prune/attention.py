"""Multi-head attention, recognised from its parameters and its reshape, and whole heads removed.

An attention module is a module with an integer head count (``num_heads``, ``num_attention_heads``,
``n_heads``, ``n_head``, ...) whose Linear children project the input into per-head rows: one fused
``qkv``-style Linear (3 · heads · head size outputs; timm, torchvision's Swin, GPT-2), or separate
query, key and value Linears (Hugging Face BERT, DistilBERT, ViT; edgeprune's replacement for
``nn.MultiheadAttention``, see mha.py). The output projection is the Linear that reads the heads'
concatenated outputs: inside the module (timm) or after it (BERT's ``output.dense``, found in the
traced graph by graph.py). Which Linear is which follows from one forward pass: the projections
run first and read the module's input, the output projection runs last and reads heads · head size
channels. No class name is looked at.

A head is removed by slicing its rows from every input projection (in the fused layout: all q rows,
then all k, then all v), its columns from the output projection, its slice of any parameter with
one dimension per head (relative position bias tables, per-head scales, a bias MLP's last layer),
and by updating the module's integer attributes that hold the head count or heads · head size
(``num_heads``, ``attn_dim``, ``all_head_size``, ``split_size``, ...). Whether the module's forward
still computes the original with those heads silenced is not assumed: the space's probe checks it
exactly (space.py), and a module whose reshape ignores its attributes is left whole.

Grouped-query attention (fewer key/value heads than query heads) keeps its heads: removing a query
head would have to keep the key/value groups even. Its input and output channels can still go.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import cast

import torch
from torch import nn

from edgeprune import modelrun

#: attributes that may hold a module's head count, in the order they are tried
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads", "nheads", "num_head")
#: an integer attribute is updated with the heads (or, graph.py, a reshape's channels) when its name
#: looks like a head count or a width
_HEAD_NAME = re.compile(r"head")
WIDTH_NAME = re.compile(r"head|dim|size|split|embed|hidden|inner|all")


@dataclasses.dataclass(frozen=True)
class AttentionSite:
    """One attention module of a model and the layers its heads live in."""

    name: str  # the module's path in the model
    heads_attr: str  # the attribute holding its head count
    num_heads: int
    head_dim: int
    projections: tuple[str, ...]  # paths of the Linears producing per-head rows (q, k, v; or one fused)
    fused: bool  # one projection holds q, k and v stacked (3 · heads · head_dim rows)
    proj: str | None  # path of the output projection, None until graph.py finds one outside the module
    kv_heads: int  # key/value heads: fewer than num_heads under grouped-query attention
    input_dim: int  # channels the projections read (the residual stream's width)
    #: every projection reads inputs of the same width, so their input columns are one index space
    #: (self-attention, CaiT's class attention reading a slice of the stream); cross-attention to a
    #: memory of another width is not
    aligned_inputs: bool

    @property
    def inner(self) -> int:
        """Channels of the heads' concatenated output: what the output projection reads."""
        return self.num_heads * self.head_dim

    @property
    def heads_prunable(self) -> str | None:
        """Why this module's heads cannot be removed, or None when they can (the probe still checks)."""
        if self.proj is None:
            return "no output projection reading the heads was found"
        if self.kv_heads != self.num_heads:
            return f"grouped-query attention ({self.kv_heads} key/value heads for {self.num_heads} query heads)"
        if self.num_heads < 2:
            return "a single head"
        return None

    def head_rows(self, heads: Iterable[int]) -> list[int]:
        """The rows of each input projection that belong to `heads` (fused: all q rows, then k, then v)."""
        d, heads = self.head_dim, list(heads)
        per = [h * d + j for h in heads for j in range(d)]
        return [s * self.inner + r for s in range(3) for r in per] if self.fused else per

    def head_cols(self, head: int) -> list[int]:
        """The output projection's input columns that one head writes."""
        return list(range(head * self.head_dim, (head + 1) * self.head_dim))

    def with_proj(self, proj: str) -> AttentionSite:
        return dataclasses.replace(self, proj=proj)


def find_attention(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[AttentionSite]:
    """Every attention module of `model`, from its attributes and one forward pass (see the module doc)."""
    candidates = {
        name: m
        for name, m in model.named_modules()
        if _head_count(m) is not None and any(isinstance(c, nn.Linear) for c in m.children())
    }
    if not candidates:
        return []
    calls: dict[str, list[tuple[str, int]]] = {n: [] for n in candidates}  # module -> [(linear path, id(input))]
    handles = []
    for name, m in candidates.items():
        for child_name, child in m.named_children():
            if isinstance(child, nn.Linear):
                path = f"{name}.{child_name}" if name else child_name
                handles.append(
                    child.register_forward_hook(
                        lambda mod, args, out, name=name, path=path: calls[name].append((path, id(args[0])))
                    )
                )
    try:
        modelrun.run(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    sites = []
    for name, m in candidates.items():
        site = _site(model, name, m, calls[name])
        if site is not None:
            sites.append(site)
    return sites


def _head_count(m: nn.Module) -> tuple[str, int] | None:
    for attr in HEAD_COUNT_ATTRS:
        value = getattr(m, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return attr, value
    return None


def _site(model: nn.Module, name: str, m: nn.Module, calls: list[tuple[str, int]]) -> AttentionSite | None:
    """The site of module `m` from the order its Linear children ran in, or None if it is not attention."""
    attr, heads = _head_count(m)  # type: ignore[misc]
    order: list[str] = []
    inputs: dict[str, int] = {}
    for path, tensor in calls:  # a Linear called twice keeps its first call's place
        if path not in inputs:
            order.append(path)
            inputs[path] = tensor
    if not order:
        return None
    layers = {p: projection(model, p) for p in order}  # only Linear children were hooked
    first = layers[order[0]]
    c = first.in_features
    # separate q, k, v: k reads what q or v reads; a fused qkv's next Linear reads the attention output
    separate = (
        len(order) >= 3
        and _separate_qkv(layers[order[0]], layers[order[1]], layers[order[2]], heads)
        and (inputs[order[1]] in (inputs[order[0]], inputs[order[2]]))
    )
    if separate:
        q, k = layers[order[0]], layers[order[1]]
        inner, kv_inner = q.out_features, k.out_features
        projections = tuple(order[:3])
    elif first.out_features % (3 * heads) == 0:
        inner = kv_inner = first.out_features // 3
        projections = (order[0],)
    else:
        return None
    if inner % heads:
        return None
    head_dim = inner // heads
    if kv_inner % head_dim:
        return None
    rest = [p for p in order if p not in projections]
    proj = rest[-1] if rest and layers[rest[-1]].in_features == inner else None
    return AttentionSite(
        name,
        attr,
        heads,
        head_dim,
        projections,
        not separate,
        proj,
        kv_inner // head_dim,
        c,
        len({layers[p].in_features for p in projections}) == 1,
    )


def projection(model: nn.Module, path: str | None) -> nn.Linear:
    """The projection at `path`: attention sites are made of Linear layers only."""
    if path is None:
        raise ValueError("this attention site has no output projection")
    return cast(nn.Linear, model.get_submodule(path))


def _separate_qkv(q: nn.Linear, k: nn.Linear, v: nn.Linear, heads: int) -> bool:
    return k.in_features == v.in_features and k.out_features == v.out_features and q.out_features % heads == 0


def per_head_parameters(module: nn.Module, site: AttentionSite, model: nn.Module) -> list[tuple[str, int]]:
    """(path within `module`, dimension) of every parameter or buffer inside the attention module,
    outside its projections, with exactly one dimension of one entry per head."""
    skip = {id(t) for p in (*site.projections, site.proj) if p is not None for t in model.get_submodule(p).parameters()}
    found = []
    for path, t in [*module.named_parameters(), *module.named_buffers()]:
        if id(t) in skip or t.dim() == 0:
            continue
        dims = [i for i, s in enumerate(t.shape) if s == site.num_heads]
        if len(dims) == 1:
            found.append((path, dims[0]))
    return found


def _set_tensor(module: nn.Module, path: str, value: torch.Tensor) -> None:
    owner_path, _, leaf = path.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    if isinstance(getattr(owner, leaf), nn.Parameter):
        setattr(owner, leaf, nn.Parameter(value, requires_grad=getattr(owner, leaf).requires_grad))
    else:
        setattr(owner, leaf, value)
    if isinstance(owner, nn.Linear):  # a bias MLP's last layer: one output per head
        owner.out_features = owner.weight.shape[0]


@torch.no_grad()
def keep_heads(model: nn.Module, site: AttentionSite, keep: Iterable[int]) -> None:
    """Physically keep only the heads in `keep` (indices into the site's original heads)."""
    keep = sorted({int(h) for h in keep})
    module = model.get_submodule(site.name)
    index = torch.tensor(keep, dtype=torch.long)
    for path, dim in per_head_parameters(module, site, model):
        tensor = module.get_parameter(path) if path in dict(module.named_parameters()) else module.get_buffer(path)
        _set_tensor(module, path, tensor.detach().index_select(dim, index).clone())
    rows = torch.tensor(site.head_rows(keep), dtype=torch.long)
    for p in site.projections:
        layer = projection(model, p)
        layer.weight = nn.Parameter(layer.weight[rows].clone())
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias[rows].clone())
        layer.out_features = len(rows)
    proj = projection(model, site.proj)
    cols = torch.tensor([c for h in keep for c in site.head_cols(h)], dtype=torch.long)
    proj.weight = nn.Parameter(proj.weight[:, cols].clone())
    proj.in_features = len(cols)
    for attr, value in list(vars(module).items()):
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if value == site.num_heads and _HEAD_NAME.search(attr):
            setattr(module, attr, len(keep))
        elif value == site.inner and WIDTH_NAME.search(attr):
            setattr(module, attr, len(keep) * site.head_dim)


@torch.no_grad()
def silence_heads(model: nn.Module, site: AttentionSite, heads: Iterable[int]) -> None:
    """Zero the output projection's columns of `heads`: the heads then contribute nothing."""
    proj = projection(model, site.proj)
    for h in heads:
        proj.weight[:, site.head_cols(h)] = 0


def head_weight_norms(model: nn.Module, site: AttentionSite) -> list[float]:
    """Each head's L1 norm: its rows of the input projections plus its output-projection columns."""
    norms: list[float] = []
    for h in range(site.num_heads):
        rows = site.head_rows([h])
        total: float = sum(float(projection(model, p).weight[rows].abs().sum()) for p in site.projections)
        total += float(projection(model, site.proj).weight[:, site.head_cols(h)].abs().sum())
        norms.append(total)
    return norms
