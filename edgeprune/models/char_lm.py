"""A small causal character-level transformer language model (FLOP's enwik8 setting, in miniature).

Token ids (B, T) in, next-character logits out, flattened to (B·T, vocab): the shape of a
classifier's logits with B·T samples, so the one training loop (cross-entropy), top-1 (next-character
accuracy), distillation and the ONNX export work unchanged, and bits per character is the mean
cross-entropy over the flattened targets divided by ln 2 (`recovery.evaluate.bits_per_char`).

The blocks are the registry ViT's (vit.Block, pre-norm, fused qkv, `num_heads`) with a causal mask,
so head pruning, MLP-width pruning and FLOP's factorization apply to it as to the ViT. Learned
absolute positions for `context` tokens; the vocabulary is 7-bit ASCII (data/text.py maps every
other character to id 0).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgeprune.models.registry import register
from edgeprune.models.vit import Block

CONTEXT = 128
VOCAB = 128


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, context: int, dim: int, depth: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, context, dim))
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio, causal=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.pos_embed[:, : tokens.shape[1]]
        return self.head(self.norm(self.blocks(x))).flatten(0, 1)  # (B*T, vocab)


@register("char_lm", (1, CONTEXT), tokens=True)
def char_lm(
    num_classes: int = VOCAB,
    dim: int = 128,
    depth: int = 2,
    num_heads: int = 4,
    mlp_ratio: float = 4.0,
    context: int = CONTEXT,
) -> CharTransformer:
    """2 layers, d = 128, 4 heads, MLP 512, 128-character context; `num_classes` is the vocabulary."""
    return CharTransformer(num_classes, context, dim, depth, num_heads, mlp_ratio)
