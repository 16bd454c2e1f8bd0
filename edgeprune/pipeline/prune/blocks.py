"""Whole-block (layer) removal: residual blocks whose input and output shapes match are deleted.

A candidate is a child of an `nn.Sequential` / `nn.ModuleList` that holds weighted layers, maps its
input to an output of the same shape, and is *residual*: with every weight inside it zeroed, its
output still follows its input (an identity path), which tells x + f(x) from a plain layer whose
removal would cut the network. Only the outermost such modules count. Removing one replaces it with
`Skip` (an `nn.Identity` that ignores a transformer layer's further arguments), so its layers
disappear from the module and from the exported graph; the model must still run with its output
shapes. A block's importance is how much bypassing it
changes the model's outputs on calibration inputs (mean squared difference of the outputs), the
output-reconstruction criterion; residual blocks that barely change the output go first.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.pipeline.prune import graph


@dataclasses.dataclass(frozen=True)
class Block:
    name: str
    #: how the block returns its output: 0 a tensor, k a tuple of k whose first item is the output
    #: (Hugging Face layers return (hidden states, attention weights))
    returns: int = 0


def find_blocks(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[Block]:
    """Removable residual blocks, in forward order; each was checked to leave a runnable model."""
    seen: dict[str, tuple[tuple[Any, ...], dict[str, Any], int]] = {}
    containers = {n for n, m in model.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList))}

    def record(name: str) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any], object], None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: object) -> None:
            first = _output_of(out)
            if args and isinstance(args[0], torch.Tensor) and first is not None and args[0].shape == first.shape:
                seen.setdefault(name, (_detached(args), _detached(kwargs), _returns(out)))

        return hook

    hooks = [
        m.register_forward_hook(record(name), with_kwargs=True)
        for name, m in model.named_modules()
        if name and name.rpartition(".")[0] in containers and any(isinstance(c, graph.ROOT_TYPES) for c in m.modules())
    ]
    try:
        ref = modelrun.output_shapes(modelrun.run(model, example_inputs))
    finally:
        for h in hooks:
            h.remove()
    blocks: list[Block] = []
    for name, (args, kwargs, returns) in seen.items():
        if any(name.startswith(b.name + ".") for b in blocks) or not _is_residual(
            model.get_submodule(name), args, kwargs
        ):
            continue
        try:
            trial = bypass(copy.deepcopy(model), [name], example_inputs)
            ok = modelrun.output_shapes(modelrun.run(trial, example_inputs)) == ref
        except Exception:  # noqa: BLE001 - a block the model cannot run without is not a candidate
            ok = False
        if ok:
            blocks.append(Block(name, returns))
    return blocks


def _output_of(out: object) -> torch.Tensor | None:
    """A block's output tensor: the output itself, or the first item of a tuple it returns."""
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    return out if isinstance(out, torch.Tensor) else None


def _returns(out: object) -> int:
    return len(out) if isinstance(out, (tuple, list)) else 0


def _detached(value: Any) -> Any:
    """A call's arguments with their tensors copied off the graph (kept to re-run the block alone)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


@torch.no_grad()
def _is_residual(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """With all its weights zeroed, does the block still pass its input through? It is called with
    the arguments the model gave it (a transformer layer's mask and positions included)."""
    hollow = copy.deepcopy(block).eval()
    for m in hollow.modules():
        if isinstance(m, graph.ROOT_TYPES):
            m.weight.zero_()
    try:
        y = _output_of(hollow(*args, **kwargs))
    except Exception:  # noqa: BLE001 - not runnable alone: not a block we can reason about
        return False
    if y is None:
        return False
    a, b = args[0].flatten().double(), y.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return denom > 0 and float(a @ b) / denom > 0.5


def inside(layer: str, blocks: Sequence[str]) -> bool:
    """Whether the named layer is one of `blocks` or sits inside one (and so is gone once they are removed)."""
    return any(layer == b or layer.startswith(b + ".") for b in blocks)


class Skip(nn.Identity):
    """A removed block: returns its first argument. Unlike nn.Identity it takes the further arguments
    a transformer layer is called with (attention mask, position embeddings) and ignores them, and it
    returns what the block returned in the shape its caller unpacks: the input alone, or, for a block
    that returned a tuple of `returns` items, the input followed by Nones (no attention weights)."""

    def __init__(self, returns: int = 0) -> None:
        super().__init__()
        self.returns = returns

    def forward(self, input: Any, *args: Any, **kwargs: Any) -> Any:
        return (input, *[None] * (self.returns - 1)) if self.returns else input


def bypass(model: nn.Module, names: Sequence[str], example_inputs: Sequence[torch.Tensor]) -> nn.Module:
    """Replace each named block with `Skip` (in place). One sample of the inputs is run first to see
    what each block returns, so its Skip returns the same structure."""
    if not names:
        return model
    returns: dict[str, int] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[Any, ...], object], None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: object) -> None:
            returns.setdefault(name, _returns(out))

        return hook

    hooks = [model.get_submodule(name).register_forward_hook(record(name)) for name in names]
    try:
        modelrun.run(model, [t[:1] for t in example_inputs])
    finally:
        for h in hooks:
            h.remove()
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        skip = Skip(returns.get(name, 0))
        if isinstance(parent, nn.ModuleList):
            parent[int(child)] = skip
        else:
            setattr(parent, child, skip)
    return model


@torch.no_grad()
def block_scores(
    model: nn.Module, blocks: Sequence[Block], calibration: torch.Tensor | tuple[torch.Tensor, ...]
) -> dict[str, float]:
    """Mean squared change of the outputs when each block alone is bypassed (higher = keep).
    `calibration`: a batch of inputs, one tensor or a tuple of them (token ids and a mask)."""
    inputs = modelrun.arguments(calibration)
    ref = [t.float() for t in modelrun.run(model, inputs)]
    out = {}
    for b in blocks:
        trial = bypass(copy.deepcopy(model), [b.name], inputs)
        got = modelrun.run(trial, inputs)
        out[b.name] = float(sum(((g.float() - r) ** 2).mean() for g, r in zip(got, ref)))
    return out
