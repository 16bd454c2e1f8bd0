"""Low-rank factorized Linears: W = P · Q with an inner rank that is an ordinary prunable channel.

FLOP (factorized L0 pruning) rewrites a Linear y = W x + b as y = P (Q x) + b, Q the `down` Linear
(in -> r, no bias) and P the `up` Linear (r -> out). Initialized from the SVD W = U S V^T as
Q = sqrt(S) V^T and P = U sqrt(S) at full rank r = min(in, out), the module computes exactly what
the Linear did. Its rank units are the output channels of `down` and the input channels of `up`,
so torch-pruning's DependencyGraph prunes them like any other Linear -> Linear channel group, and
the pruned model is two smaller dense Linears in ONNX (two MatMul initializers of r·in and out·r).

A factorization only pays when r·(in + out) < in·out; a pair pruned to a rank where it does not is
merged back into one dense Linear (W = P Q), the cheaper of the two forms (`merge_expensive`).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn


class FactorizedLinear(nn.Module):
    """y = up(down(x)): `down` in -> rank (no bias), `up` rank -> out (the original bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FactorizedLinear:
        """The full-rank factorization of `linear` by SVD: the same function, split at the rank."""
        w = linear.weight.detach().double()
        u, s, vt = torch.linalg.svd(w, full_matrices=False)
        root = s.sqrt()
        module = cls(linear.in_features, linear.out_features, len(s), linear.bias is not None)
        with torch.no_grad():
            module.down.weight.copy_((root[:, None] * vt).to(linear.weight.dtype))
            module.up.weight.copy_((u * root[None, :]).to(linear.weight.dtype))
            if linear.bias is not None:
                module.up.bias.copy_(linear.bias)
        return module.to(linear.weight.device)

    @property
    def rank(self) -> int:
        return self.down.out_features

    @property
    def costs_more_than_dense(self) -> bool:
        """Whether the pair has at least the parameters (and per-token MACs) of the dense Linear."""
        return (
            self.rank * (self.down.in_features + self.up.out_features) >= self.down.in_features * self.up.out_features
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def merged(self) -> nn.Linear:
        """One dense Linear computing the same function (W = P Q)."""
        dense = nn.Linear(self.down.in_features, self.up.out_features, bias=self.up.bias is not None)
        with torch.no_grad():
            dense.weight.copy_(self.up.weight @ self.down.weight)
            if self.up.bias is not None:
                dense.bias.copy_(self.up.bias)
        return dense.to(self.up.weight.device)


def replace(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at the dotted `name` inside `model` (in place)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def factorize(model: nn.Module, names: list[str]) -> nn.Module:
    """Replace each named Linear of `model` by its full-rank factorization, in place; names that
    are already factorized are left as they are (so a resumed run can rebuild the architecture)."""
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Linear):
            replace(model, name, FactorizedLinear.from_linear(layer))
    return model


def merge_expensive(model: nn.Module) -> list[str]:
    """Merge every factorized pair that is no cheaper than its dense Linear back into one Linear,
    in place; returns the merged names."""
    names = [n for n, m in model.named_modules() if isinstance(m, FactorizedLinear) and m.costs_more_than_dense]
    for name in names:
        replace(model, name, cast(FactorizedLinear, model.get_submodule(name)).merged())
    return names
