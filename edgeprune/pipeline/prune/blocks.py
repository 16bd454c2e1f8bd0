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


def find_blocks(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[Block]:
    """Removable residual blocks, in forward order; each was checked to leave a runnable model."""
    seen: dict[str, torch.Tensor] = {}
    containers = {n for n, m in model.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList))}

    def record(name: str) -> Callable[[nn.Module, tuple[Any, ...], object], None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: object) -> None:
            if (
                args
                and isinstance(args[0], torch.Tensor)
                and isinstance(out, torch.Tensor)
                and args[0].shape == out.shape
            ):
                seen.setdefault(name, args[0].detach().clone())

        return hook

    hooks = [
        m.register_forward_hook(record(name))
        for name, m in model.named_modules()
        if name and name.rpartition(".")[0] in containers and any(isinstance(c, graph.ROOT_TYPES) for c in m.modules())
    ]
    try:
        ref = modelrun.output_shapes(modelrun.run(model, example_inputs))
    finally:
        for h in hooks:
            h.remove()
    blocks: list[Block] = []
    for name, x in seen.items():
        if any(name.startswith(b.name + ".") for b in blocks) or not _is_residual(model.get_submodule(name), x):
            continue
        try:
            ok = modelrun.output_shapes(modelrun.run(bypass(copy.deepcopy(model), [name]), example_inputs)) == ref
        except Exception:  # noqa: BLE001 - a block the model cannot run without is not a candidate
            ok = False
        if ok:
            blocks.append(Block(name))
    return blocks


@torch.no_grad()
def _is_residual(block: nn.Module, x: torch.Tensor) -> bool:
    """With all its weights zeroed, does the block still pass its input through?"""
    hollow = copy.deepcopy(block).eval()
    for m in hollow.modules():
        if isinstance(m, graph.ROOT_TYPES):
            m.weight.zero_()
    try:
        y = hollow(x)
    except Exception:  # noqa: BLE001 - not runnable alone: not a block we can reason about
        return False
    a, b = x.flatten().double(), y.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return denom > 0 and float(a @ b) / denom > 0.5


def inside(layer: str, blocks: Sequence[str]) -> bool:
    """Whether the named layer is one of `blocks` or sits inside one (and so is gone once they are removed)."""
    return any(layer == b or layer.startswith(b + ".") for b in blocks)


class Skip(nn.Identity):
    """A removed block: returns its first argument. Unlike nn.Identity it takes the further arguments
    a transformer layer is called with (attention mask, position embeddings) and ignores them."""

    def forward(self, input: Any, *args: Any, **kwargs: Any) -> Any:
        return input


def bypass(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Replace each named block with `Skip` (in place)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, nn.ModuleList):
            parent[int(child)] = Skip()
        else:
            setattr(parent, child, Skip())
    return model


@torch.no_grad()
def block_scores(
    model: nn.Module, blocks: Sequence[Block], calibration: torch.Tensor | tuple[torch.Tensor, ...]
) -> dict[str, float]:
    """Mean squared change of the outputs when each block alone is bypassed (higher = keep).
    `calibration`: a batch of inputs, one tensor or a tuple of them (token ids and a mask)."""
    inputs = calibration if isinstance(calibration, tuple) else (calibration,)
    ref = [t.float() for t in modelrun.run(model, inputs)]
    out = {}
    for b in blocks:
        trial = bypass(copy.deepcopy(model), [b.name])
        got = modelrun.run(trial, inputs)
        out[b.name] = float(sum(((g.float() - r) ** 2).mean() for g, r in zip(got, ref)))
    return out
