"""Whole-head pruning for fused-qkv attention modules.

torch-pruning's DependencyGraph traces a fused ``qkv`` Linear through ``reshape(B, N, 3, heads, -1)``
as if its 3·C outputs mapped one-to-one onto the ``proj`` Linear's C inputs, so pruning such a group
through the graph yields a broken model. The coupling is entirely inside the attention module, so we
handle it here instead: a head is removed by slicing its rows from q, k and v in ``qkv`` and its
columns from ``proj``, then decrementing ``num_heads``. The module's forward must derive the head
dimension from the tensor (``reshape(..., self.num_heads, -1)``), as the registry's ViT does; a module
that hard-codes it fails the probe and is left whole.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class AttentionSite:
    """A fused-qkv attention module found in a model."""

    name: str
    module: nn.Module

    @property
    def qkv(self) -> nn.Linear:
        return self.module.qkv

    @property
    def proj(self) -> nn.Linear:
        return self.module.proj

    @property
    def num_heads(self) -> int:
        return int(self.module.num_heads)

    @property
    def head_dim(self) -> int:
        return self.qkv.out_features // (3 * self.num_heads)

    def head_rows(self, heads: Iterable[int]) -> list[int]:
        """The qkv output rows of `heads`, in the fused layout: all q rows, then k, then v."""
        inner, d = self.qkv.out_features // 3, self.head_dim
        return [s * inner + h * d + j for s in range(3) for h in heads for j in range(d)]

    def head_cols(self, head: int) -> list[int]:
        """The proj input columns fed by one head."""
        d = self.head_dim
        return list(range(head * d, (head + 1) * d))


def find_attention(model: nn.Module) -> list[AttentionSite]:
    """Modules following the common fused-qkv convention (timm, the registry ViT)."""
    sites = []
    for name, m in model.named_modules():
        qkv, proj, heads = getattr(m, "qkv", None), getattr(m, "proj", None), getattr(m, "num_heads", None)
        if (
            isinstance(qkv, nn.Linear)
            and isinstance(proj, nn.Linear)
            and isinstance(heads, int)
            and qkv.out_features % (3 * heads) == 0
            and proj.in_features == qkv.out_features // 3
        ):
            sites.append(AttentionSite(name, m))
    return sites


def keep_heads(site: AttentionSite, keep: Iterable[int]) -> None:
    """Physically keep only the heads in `keep` (indices into the current heads)."""
    keep = sorted(set(int(h) for h in keep))
    rows = site.head_rows(keep)
    cols = [c for h in keep for c in site.head_cols(h)]
    qkv, proj = site.qkv, site.proj
    with torch.no_grad():
        qkv.weight = nn.Parameter(qkv.weight[rows].clone())
        if qkv.bias is not None:
            qkv.bias = nn.Parameter(qkv.bias[rows].clone())
        proj.weight = nn.Parameter(proj.weight[:, cols].clone())
    qkv.out_features = len(rows)
    proj.in_features = len(cols)
    site.module.num_heads = len(keep)
