"""The exact reference a pruned model must match: the original with the removed units silenced.

A channel whose producing filters, biases and norm affine are zeroed is exactly zero wherever it
flows, so a correctly pruned model computes what that silenced original computes; a head whose
output-projection columns are zeroed contributes nothing. Norms that mix channels (LayerNorm,
GroupNorm, RMSNorm) would still count the silenced channels in their statistics, so while the
reference runs, a `TorchFunctionMode` computes those norms over the kept channels only (GroupNorm
per original group): what the pruned norm computes if, and only if, the removal is right (a
GroupNorm pruned unevenly regroups its channels and fails). Whatever else mixes channels (a mean
over channels, a channel shuffle the graph cannot follow, a GLU whose halves were paired wrongly)
is not modelled, so the pruned model differs from the reference and the group is left whole.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from edgeprune import modelrun
from edgeprune.pipeline.prune import attention
from edgeprune.pipeline.prune.removal import Cuts

#: a pruned output may differ from the reference by this much (atol + rtol x max|reference|):
#: removal changes summation order only; a mis-traced coupling changes outputs at order 1
ATOL, RTOL = 1e-5, 1e-3
_NORMS = ("ln", "gn", "rms")


class Unverifiable(Exception):
    """The reference cannot be built for this removal (the message says why)."""


@torch.no_grad()
def reference_outputs(
    model: nn.Module,
    cuts: Cuts,
    heads: dict[attention.AttentionSite, list[int]],
    example_inputs: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """Outputs of a copy of `model` with every unit the cuts and head removals take out silenced."""
    quiet = copy.deepcopy(model)
    kept: dict[Any, torch.Tensor] = {}  # norm module or weight tensor -> its kept channels (bool)
    for (name, side), (kind, dim, idxs) in cuts.items():
        if side != "out":
            continue  # readers need nothing: what they read is already zero
        target = quiet.get_parameter(name) if kind == "param" else quiet.get_submodule(name)
        mask = _silence(target, kind, dim, sorted(idxs), name)
        if kind in _NORMS or kind == "param":
            kept[target] = mask
    for site, removed in heads.items():
        attention.silence_heads(quiet, site, removed)
    with _masked_norms(quiet, kept):
        return modelrun.run(quiet, example_inputs)


def matches(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> bool:
    """Same shapes, and every output within ATOL + RTOL x its largest reference value."""
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g.shape != w.shape:
            return False
        if not w.is_floating_point():
            if not torch.equal(g, w):
                return False
            continue
        if not (torch.isfinite(w).all() and torch.isfinite(g).all()):
            return False
        scale = float(w.abs().max()) if w.numel() else 0.0
        if w.numel() and float((g.double() - w.double()).abs().max()) > ATOL + RTOL * scale:
            return False
    return True


def _silence(target: Any, kind: str, dim: int, idxs: list[int], name: str) -> torch.Tensor:
    """Zero what `target` writes into channels `idxs`; returns the kept-channel mask."""
    if kind == "param":
        size = target.shape[dim]
        target.index_fill_(dim, torch.tensor(idxs, dtype=torch.long), 0.0)
        return _mask(size, idxs)
    if kind in ("lstm", "mha", "other"):
        raise Unverifiable(f"{name} ({type(target).__name__}) cannot be silenced channel by channel")
    weight, bias = getattr(target, "weight", None), getattr(target, "bias", None)
    w_dim = {"convT": 1, "embed": 1}.get(kind, 0)
    if isinstance(weight, torch.Tensor) and kind != "prelu":
        weight.index_fill_(w_dim, torch.tensor(idxs, dtype=torch.long), 0.0)
    if isinstance(bias, torch.Tensor) and kind != "embed":
        bias[idxs] = 0.0
    if kind == "bn" and target.running_mean is not None:
        target.running_mean[idxs] = 0.0  # a BN without affine then maps the (zero) input to zero
    size = weight.shape[w_dim] if isinstance(weight, torch.Tensor) else _norm_size(target)
    return _mask(size, idxs)


def _norm_size(norm: nn.Module) -> int:
    """Channels of a norm without affine weights (LayerNorm/RMSNorm, GroupNorm, InstanceNorm)."""
    shape = getattr(norm, "normalized_shape", None)
    return int(shape[-1]) if shape else int(getattr(norm, "num_channels", None) or cast(int, norm.num_features))


def _mask(size: int, removed: list[int]) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[removed] = False
    return mask


@contextlib.contextmanager
def _masked_norms(model: nn.Module, kept: dict[Any, torch.Tensor]) -> Iterator[None]:
    """While open, LayerNorm / GroupNorm / RMSNorm calls whose weight (or module) is in `kept` use
    only the kept channels' statistics and output zero on the others."""
    by_weight = {id(t): m for t, m in kept.items() if isinstance(t, torch.Tensor)}
    by_module = {id(t): m for t, m in kept.items() if isinstance(t, nn.Module)}
    for t, m in kept.items():
        if isinstance(t, nn.Module) and isinstance(getattr(t, "weight", None), torch.Tensor):
            by_weight[id(t.weight)] = m
    mode = _Masking(by_weight, by_module)

    def enter(mod: nn.Module, args: Any) -> None:
        mode.current.append(id(mod))

    def leave(mod: nn.Module, args: Any, out: Any) -> None:
        mode.current.pop()

    hooks = []
    for t in kept:
        if isinstance(t, nn.Module):
            hooks += [t.register_forward_pre_hook(enter), t.register_forward_hook(leave)]
    try:
        with mode:
            yield
    finally:
        for h in hooks:
            h.remove()


class _Masking(TorchFunctionMode):
    def __init__(self, by_weight: dict[int, torch.Tensor], by_module: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.by_weight, self.by_module = by_weight, by_module
        self.current: list[int] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        masked = _MASKED.get(func)
        if masked is not None:
            bound = _SIGNATURES[func].bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            mask = self.by_weight.get(id(a.get("weight"))) if a.get("weight") is not None else None
            if mask is None and self.current:
                mask = self.by_module.get(self.current[-1])
            if mask is not None:
                return masked(a, mask)
        return func(*args, **kwargs)


def _last_dim(fn: Any, a: dict[str, Any], mask: torch.Tensor, *extra: str) -> torch.Tensor:
    """A norm over the last dimension, computed on the kept channels (zero elsewhere)."""
    x = a["input"]
    if len(a["normalized_shape"]) != 1:
        raise Unverifiable("a norm over several dimensions")
    idx = mask.nonzero().flatten()
    w = a["weight"].index_select(-1, idx) if a.get("weight") is not None else None
    kwargs = {"weight": w, "eps": a["eps"]}
    if "bias" in extra:
        kwargs["bias"] = a["bias"].index_select(-1, idx) if a.get("bias") is not None else None
    y = fn(x.index_select(-1, idx), (len(idx),), **kwargs)
    return torch.zeros_like(x).index_copy(-1, idx, y)


def _group_norm(a: dict[str, Any], mask: torch.Tensor) -> torch.Tensor:
    """GroupNorm with each original group's statistics over its kept channels."""
    x, groups = a["input"], a["num_groups"]
    per = x.shape[1] // groups
    out = torch.zeros_like(x)
    for g in range(groups):
        idx = mask[g * per : (g + 1) * per].nonzero().flatten() + g * per
        if not len(idx):
            continue
        part = x.index_select(1, idx)
        dims = tuple(range(1, part.dim()))
        mean = part.mean(dims, keepdim=True)
        var = part.var(dims, unbiased=False, keepdim=True)
        y = (part - mean) / torch.sqrt(var + a["eps"])
        shape = (1, -1, *[1] * (part.dim() - 2))
        if a.get("weight") is not None:
            y = y * a["weight"].index_select(0, idx).view(shape)
        if a.get("bias") is not None:
            y = y + a["bias"].index_select(0, idx).view(shape)
        out.index_copy_(1, idx, y)
    return out


_MASKED: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {
    F.layer_norm: lambda a, m: _last_dim(F.layer_norm, a, m, "bias"),
    F.rms_norm: lambda a, m: _last_dim(F.rms_norm, a, m),
    F.group_norm: _group_norm,
}
_SIGNATURES = {f: inspect.signature(f) for f in _MASKED}
