"""Swap layers edgeprune cannot cut for equivalent ones it can, when a model is loaded.

- `nn.MultiheadAttention` becomes mha.MultiheadAttention (separate q, k, v Linears): its heads and
  its input channels can then go (torchvision's ViTs, every nn.Transformer*).
- A leaf module that computes exactly a Linear layer without being an `nn.Linear` (Hugging Face's
  `Conv1D` in GPT-2, whose weight is stored transposed) becomes an `nn.Linear`, recognised by what it
  computes on random inputs, not by its class name.

The model's outputs on its example inputs must be unchanged (to float tolerance), else nothing is
swapped. The caller's module is never modified: the swaps happen on a copy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune import modelrun
from edgeprune.pipeline.prune.mha import MultiheadAttention


def canonical(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> tuple[nn.Module, list[str]]:
    """`model`, or a copy with the swaps done, and one line per swap (for the report)."""
    swaps = {name: new for name, m in model.named_modules() if name and (new := _replacement(m)) is not None}
    if not swaps:
        return model, []
    before = modelrun.run(model, example_inputs)
    out = copy.deepcopy(model)
    notes = []
    for name, new in swaps.items():
        parent, _, leaf = name.rpartition(".")
        owner = out.get_submodule(parent) if parent else out
        notes.append(f"{name}: {type(getattr(owner, leaf)).__name__} -> {type(new).__module__}.{type(new).__name__}")
        setattr(owner, leaf, new)
    after = modelrun.run(out, example_inputs)
    if not all(
        a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + float(b.abs().max())))
        for a, b in zip(after, before)
        if b.is_floating_point()
    ):
        return model, []
    return out, notes


def _replacement(m: nn.Module) -> nn.Module | None:
    if isinstance(m, nn.MultiheadAttention):
        return MultiheadAttention.from_native(m)
    return _as_linear(m)


@torch.no_grad()
def _as_linear(m: nn.Module) -> nn.Linear | None:
    """An nn.Linear computing what leaf module `m` computes, if `m` is a linear layer in disguise."""
    if isinstance(m, (nn.Linear, nn.Embedding)) or len(list(m.children())) or len(list(m.buffers())):
        return None
    params = dict(m.named_parameters())
    weight, bias = params.get("weight"), params.get("bias")
    if (
        weight is None
        or weight.dim() != 2
        or set(params) - {"weight", "bias"}
        or (bias is not None and bias.dim() != 1)
    ):
        return None
    for w in (weight.t(), weight):  # stored (in, out) as in Conv1D, or (out, in) as in nn.Linear
        if bias is not None and bias.shape[0] != w.shape[0]:
            continue
        x = torch.randn(2, 3, w.shape[1], generator=torch.Generator().manual_seed(0))
        try:
            y = m(x)
        except Exception:  # noqa: BLE001 - it does not take this input: not this layout
            continue
        want = F.linear(x, w, bias)
        if isinstance(y, torch.Tensor) and y.shape == want.shape and torch.allclose(y, want, rtol=1e-5, atol=1e-6):
            new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
            new.weight.copy_(w)
            if bias is not None:
                new.bias.copy_(bias)
            return new.train(m.training)
    return None
