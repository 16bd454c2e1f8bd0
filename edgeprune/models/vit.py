"""A small Vision Transformer (Dosovitskiy et al. 2021) for 32x32 inputs.

4x4 patches give 64 tokens plus a cls token; pre-norm blocks; the head reads the cls token.

Written for structured pruning: `Attention` keeps a fused `qkv` Linear, a `proj` Linear and a
`num_heads` attribute (the convention edgeprune's head pruning and torch-pruning look for), and
its forward derives the head size from the tensors instead of storing it. A pruner that removes
whole heads (and updates `num_heads`) or the same number of dims from every head therefore leaves
a module that still runs, with the attention scale following the new head size.

Attention uses `F.scaled_dot_product_attention`: it exports with the TorchScript ONNX exporter
(`dynamo=False`) at opset 17 as MatMul/Softmax/MatMul plus a small Shape->Sqrt subgraph for the
scale, the same ops an explicit softmax(q @ k^T * scale) @ v gives; tests/test_models.py checks
the export against ONNX Runtime.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeprune.models.registry import CIFAR_INPUT, register


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv projection; `causal` masks future tokens (the
    character language model, char_lm.py)."""

    def __init__(self, dim: int, num_heads: int, causal: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        # (B, N, 3*H*d) -> (3, B, H, N, d); d comes from the weight's current size via -1.
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # scale = 1/sqrt(q.shape[-1])
        return self.proj(out.transpose(1, 2).reshape(B, N, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, causal: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Conv patch embedding + cls token + learned positions, `depth` blocks, LayerNorm, linear head."""

    def __init__(
        self,
        num_classes: int,
        img_size: int,
        patch: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img_size // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal(0.02) tokens and linears, zero biases: the standard ViT initialisation."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register("vit_tiny", CIFAR_INPUT)
def vit_tiny(
    num_classes: int = 10, dim: int = 192, depth: int = 6, num_heads: int = 3, mlp_ratio: float = 4.0
) -> VisionTransformer:
    """ViT for 32x32 images with 4x4 patches (64 tokens + cls)."""
    return VisionTransformer(num_classes, 32, 4, dim, depth, num_heads, mlp_ratio)
