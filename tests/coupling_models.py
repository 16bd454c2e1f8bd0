"""Small models, one per kind of channel coupling a structured pruner must get right."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cbr(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    """Residual adds: the stream's channels are shared by every block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.b1 = nn.Sequential(cbr(32, 32), nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.b2 = nn.Sequential(cbr(32, 32), nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.b1(x))
        x = F.relu(x + self.b2(x))
        return self.fc(x.mean((2, 3)))


class Concat(nn.Module):
    """Two branches concatenated, then a consumer of both."""

    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 32)
        self.b = cbr(3, 16)
        self.mix = cbr(48, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mix(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


class SplitChunk(nn.Module):
    """A layer's output split in two halves that go different ways."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 64)
        self.left = cbr(32, 32)
        self.right = cbr(32, 32)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lhs, rhs = torch.chunk(self.stem(x), 2, dim=1)
        return self.fc(torch.cat([self.left(lhs), self.right(rhs)], 1).mean((2, 3)))


class Depthwise(nn.Module):
    """MobileNet-style: expand, depthwise, project, with a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.expand = cbr(16, 64)
        self.dw = cbr(64, 64, groups=64)
        self.project = nn.Sequential(nn.Conv2d(64, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.fc(x.mean((2, 3)))


class Grouped(nn.Module):
    """A grouped (not depthwise) conv: torch-pruning removes its channels unevenly, so we leave it whole."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.g = cbr(32, 32, groups=4)
        self.head_in = cbr(32, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head_in(self.g(self.stem(x))).mean((2, 3)))


class Norms(nn.Module):
    """GroupNorm in a conv stack and LayerNorm before the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.gn = nn.GroupNorm(1, 32)
        self.c2 = nn.Conv2d(32, 32, 3, padding=1)
        self.ln = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c2(F.relu(self.gn(self.c1(x))))
        return self.fc(self.ln(x.mean((2, 3))))


class Attention(nn.Module):
    """Fused-qkv attention (timm convention). With `heads_from_config` the reshape uses a head count
    stored elsewhere, as many real models do: it still runs after a head is removed, but wrongly."""

    def __init__(self, dim: int, heads: int, heads_from_config: bool = False) -> None:
        super().__init__()
        self.num_heads = heads
        self.config = {"heads": heads} if heads_from_config else None
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        heads = self.config["heads"] if self.config else self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        out = (a.softmax(-1) @ v).transpose(1, 2)
        return self.proj(out.reshape(b, n, -1))


class TinyTransformer(nn.Module):
    """Token embedding, one pre-norm block (attention + MLP), classifier."""

    def __init__(self, heads_from_config: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.n1 = nn.LayerNorm(32)
        self.attn = Attention(32, 4, heads_from_config)
        self.n2 = nn.LayerNorm(32)
        self.fc1 = nn.Linear(32, 128)
        self.fc2 = nn.Linear(128, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn(self.n1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.n2(x))))
        return self.head(x.mean(1))


CONV_MODELS = {"residual": Residual, "concat": Concat, "split": SplitChunk, "depthwise": Depthwise}
IMAGE = (1, 3, 16, 16)
TOKENS = (1, 6, 8)
