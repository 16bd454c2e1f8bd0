"""`nn.MultiheadAttention`'s computation with separate q, k, v Linears, so that heads can be removed.

PyTorch's module keeps q, k and v in one `in_proj_weight` whose inner width is tied to its
`embed_dim` (the input width): `F.multi_head_attention_forward` derives the head size from
`embed_dim // num_heads` and asserts the input has `embed_dim` channels, so neither a head nor an
input channel can be removed from it. This module computes the same function (canonical.py checks
that on the model's own inputs before swapping one in) with q, k, v and the output projection as
plain Linears and a head count that is only ever read, so attention.py finds it like any other
attention module (torchvision's ViTs, nn.Transformer*).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiheadAttention(nn.Module):
    """Drop-in for `nn.MultiheadAttention` (same call signature and outputs), heads removable."""

    #: keeps nn.TransformerEncoderLayer off its fused fast path, which reads in_proj_weight
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None
    head_index: torch.Tensor  # a buffer: the original index of each head still here

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        kdim: int,
        vdim: int,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.batch_first = batch_first
        self.dropout = dropout
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(kdim, inner, bias=bias)
        self.v_proj = nn.Linear(vdim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        # the original index of each head, for per-head (batch * heads, L, S) masks after heads are removed
        self.register_buffer("head_index", torch.arange(num_heads), persistent=False)

    @classmethod
    def from_native(cls, m: nn.MultiheadAttention) -> MultiheadAttention | None:
        """The equivalent of `m` with its weights, or None for options it does not support."""
        if m.bias_k is not None or m.bias_v is not None or m.add_zero_attn:
            return None
        e = m.embed_dim
        new = cls(
            e, m.num_heads, e // m.num_heads, m.kdim, m.vdim, m.in_proj_bias is not None, m.batch_first, m.dropout
        )
        with torch.no_grad():
            weights = (
                m.in_proj_weight.chunk(3)
                if m._qkv_same_embed_dim
                else (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
            )
            in_bias: torch.Tensor | None = m.in_proj_bias  # None when built with bias=False (torch types it Tensor)
            biases = in_bias.chunk(3) if in_bias is not None else (None, None, None)
            for layer, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)
            new.out_proj.weight.copy_(m.out_proj.weight)
            if m.out_proj.bias is not None:
                new.out_proj.bias.copy_(m.out_proj.bias)
        return new.train(m.training)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, n, s = query.shape[0], query.shape[1], key.shape[1]
        q = self.q_proj(query).view(b, n, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(b, s, -1, self.head_dim).transpose(1, 2)
        scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        bias = self._mask(attn_mask, key_padding_mask, is_causal, b, n, s, scores.dtype)
        if bias is not None:
            scores = scores + bias
        weights = scores.softmax(-1)
        out = F.dropout(weights, self.dropout, self.training) @ v
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, -1))
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        w = weights.mean(1) if average_attn_weights else weights
        return out, (w.squeeze(0) if unbatched else w)

    def _mask(
        self,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
        b: int,
        n: int,
        s: int,
        dtype: torch.dtype,
    ) -> Tensor | None:
        """One additive (batch or 1, heads or 1, n, s) mask from the module's mask arguments."""
        total = None
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(n, s, dtype=torch.bool, device=self.q_proj.weight.device).triu(1)
        if attn_mask is not None:
            m = _additive(attn_mask, dtype)
            if m.dim() == 3:  # (batch * original heads, n, s): keep the rows of the heads still here
                m = m.view(b, -1, n, s).index_select(1, self.head_index)
            total = m
        if key_padding_mask is not None:
            pad = _additive(key_padding_mask, dtype).view(b, 1, 1, s)
            total = pad if total is None else total + pad
        return total


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True = not attended) as -inf where masked; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)
