"""Small structural replicas of the public architectures users bring (timm, torchvision, Hugging
Face, ultralytics), one per construct that broke edgeprune or torch-pruning: the suite runs them
without any of those libraries installed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cbs(cin: int, cout: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv-BN-SiLU, ultralytics' and timm's basic block."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.SiLU()
    )


class ChannelShuffle(nn.Module):
    """torchvision ShuffleNetV2's unit: chunk, a branch on one half, concat, channel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbs(3, 32, 3)
        self.branch = nn.Sequential(cbs(16, 16), cbs(16, 16, 3, groups=16), cbs(16, 16))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(x.mean((2, 3)))


class WindowAttention(nn.Module):
    """timm / Swin window attention: fused qkv, a relative position bias table with one column per
    head, the head count read from `num_heads`."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.5)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window - 1) + rel[..., 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        out = ((attn + bias).softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(out)


class WindowTransformer(nn.Module):
    """Patch embedding, a window-attention block and an MLP, then Swin's patch merging (a concat of
    four strided slices along channels) and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 2, stride=2)
        self.norm1 = nn.LayerNorm(32)
        self.attn = WindowAttention(32, 4, 4)
        self.norm2 = nn.LayerNorm(32)
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 32)
        self.merge_norm = nn.LayerNorm(128)
        self.reduction = nn.Linear(128, 64, bias=False)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)  # (1, 32, 4, 4): one window of 16 tokens
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = x + self.attn(self.norm1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        x = self.reduction(self.merge_norm(x.view(b, -1, 4 * c)))
        return self.head(x.mean(1))


class HFSelfAttention(nn.Module):
    """Hugging Face BERT's self-attention: separate query/key/value Linears, the head size from an
    attribute, the output projection in another module. `kv_heads` < heads makes it grouped-query."""

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None) -> None:
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = dim // heads
        self.all_head_size = dim
        self.kv_heads = kv_heads or heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, self.kv_heads * self.attention_head_size)
        self.value = nn.Linear(dim, self.kv_heads * self.attention_head_size)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, None]:
        shape = (*hidden.shape[:-1], -1, self.attention_head_size)
        q = self.query(hidden).view(shape).transpose(1, 2)
        k = self.key(hidden).view(shape).transpose(1, 2)
        v = self.value(hidden).view(shape).transpose(1, 2)
        if self.kv_heads != self.num_attention_heads:
            k = k.repeat_interleave(self.num_attention_heads // self.kv_heads, 1)
            v = v.repeat_interleave(self.num_attention_heads // self.kv_heads, 1)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(*hidden.shape[:-1], -1), None


class HFLayer(nn.Module):
    """A BERT layer: self-attention, `output.dense` + LayerNorm after the residual add, an MLP."""

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None) -> None:
        super().__init__()
        self.attention = HFSelfAttention(dim, heads, kv_heads)
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.intermediate = nn.Linear(dim, 4 * dim)
        self.output = nn.Linear(4 * dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x + self.dense(self.attention(x)[0]))
        return self.norm_out(x + self.output(F.gelu(self.intermediate(x))))


class HFEncoder(nn.Module):
    """Token embedding + position embedding, two BERT layers, a classifier on the first token."""

    def __init__(self, kv_heads: int | None = None) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(100, 32)
        self.position = nn.Embedding(16, 32)
        self.norm = nn.LayerNorm(32)
        self.layers = nn.ModuleList(HFLayer(32, 4, kv_heads) for _ in range(2))
        self.classifier = nn.Linear(32, 10)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embeddings(ids) + self.position(torch.arange(ids.shape[1])))
        for layer in self.layers:
            x = layer(x)
        return self.classifier(x[:, 0])


class TorchEncoder(nn.Module):
    """torchvision ViT's encoder block: nn.MultiheadAttention (one fused in_proj_weight) and an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.ln_1 = nn.LayerNorm(32)
        self.self_attention = nn.MultiheadAttention(32, 4, batch_first=True)
        self.ln_2 = nn.LayerNorm(32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        x = x + self.mlp(self.ln_2(x))
        return self.head(x.mean(1))


class PatchViT(nn.Module):
    """torchvision's VisionTransformer: the patch embedding reshaped with `self.hidden_dim`, a class
    token, a position embedding, nn.MultiheadAttention blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden_dim = 32
        self.conv_proj = nn.Conv2d(3, 32, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, 32) * 0.1)
        self.pos_embedding = nn.Parameter(torch.randn(1, 17, 32) * 0.1)
        self.block = TorchEncoder()
        self.ln = nn.LayerNorm(32)
        self.heads = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], 1) + self.pos_embedding
        y = self.block.ln_1(x)
        x = x + self.block.self_attention(y, y, y, need_weights=False)[0]
        x = x + self.block.mlp(self.block.ln_2(x))
        return self.heads(self.ln(x)[:, 0])


class TransposedLinear(nn.Module):
    """Hugging Face's Conv1D (GPT-2): a Linear whose weight is stored (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], self.nf)


class GPT2Attention(nn.Module):
    """GPT-2's attention: one Conv1D c_attn split into q, k, v by `split_size`, Conv1D c_proj."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.split_size = heads, dim // heads, dim
        self.c_attn = TransposedLinear(3 * dim, dim)
        self.c_proj = TransposedLinear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(x).split(self.split_size, dim=2)
        q, k, v = (t.view(*t.shape[:-1], -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        return self.c_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(*x.shape[:-1], -1))


class GPT2Block(nn.Module):
    """GPT-2's block: attention and an MLP of Conv1D layers (weights stored transposed)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.attn = GPT2Attention(32, 4)
        self.c_fc = TransposedLinear(64, 32)
        self.c_out = TransposedLinear(32, 64)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn(x)
        x = x + self.c_out(F.gelu(self.c_fc(x)))
        return self.head(x.mean(1))


class GLU(nn.Module):
    """A GLU: one conv's output chunked in two, the halves multiplied (a * sigmoid(b))."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbs(3, 32, 3)
        self.conv = nn.Conv2d(32, 64, 3, padding=1)
        self.out = cbs(32, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv(self.stem(x)).chunk(2, dim=1)
        return self.head(self.out(a * torch.sigmoid(b)).mean((2, 3)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1, self.cv2 = cbs(c, c, 3), cbs(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """ultralytics' C2f / C3k2: cv1's output chunked in two, bottlenecks on the second half, every
    intermediate concatenated, cv2 over the concat."""

    def __init__(self, c1: int, c2: int, n: int = 2, shortcut: bool = True) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = cbs(c1, 2 * self.c)
        self.cv2 = cbs((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class Detector(nn.Module):
    """A YOLO-like detector: backbone, C2f blocks with and without shortcuts, and a head with one
    output per level (box and class convs concatenated), returned as a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbs(3, 16, 3)
        self.c1 = C2f(16, 32, 1, shortcut=True)
        self.down = cbs(32, 64, 3)
        self.c2 = C2f(64, 64, 1, shortcut=False)
        self.box = nn.ModuleList(
            [nn.Sequential(cbs(32, 32, 3), nn.Conv2d(32, 16, 1)), nn.Sequential(cbs(64, 32, 3), nn.Conv2d(32, 16, 1))]
        )
        self.cls = nn.ModuleList(
            [nn.Sequential(cbs(32, 32, 3), nn.Conv2d(32, 5, 1)), nn.Sequential(cbs(64, 32, 3), nn.Conv2d(32, 5, 1))]
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p3 = self.c1(self.stem(x))
        p4 = self.c2(self.down(nn.functional.max_pool2d(p3, 2)))
        return tuple(torch.cat([b(p), c(p)], 1) for p, b, c in zip((p3, p4), self.box, self.cls))


class ResNeXtBlock(nn.Module):
    """1x1 -> grouped 3x3 (groups=4) -> 1x1 with a residual stream."""

    def __init__(self, c: int = 32, width: int = 32, groups: int = 4) -> None:
        super().__init__()
        self.conv1, self.conv2 = cbs(c, width), cbs(width, width, 3, groups=groups)
        self.conv3 = nn.Sequential(nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv3(self.conv2(self.conv1(x))))


class ResNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbs(3, 32, 3)
        self.blocks = nn.Sequential(ResNeXtBlock(), ResNeXtBlock())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class RegNet(nn.Module):
    """RegNet-X stages: fixed group width 8 (groups = width / 8), a strided projection shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbs(3, 16, 3)
        self.s1 = ResNeXtBlock(16, 24, 3)
        self.proj = nn.Sequential(nn.Conv2d(16, 48, 1, stride=2, bias=False), nn.BatchNorm2d(48))
        self.a = nn.Sequential(cbs(16, 48), cbs(48, 48, 3, groups=6))
        self.b = nn.Sequential(nn.Conv2d(48, 48, 1, bias=False), nn.BatchNorm2d(48))
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s1(self.stem(x))
        y = self.b(self.a(F.avg_pool2d(x, 2) * 1.0))
        return self.head(F.relu(self.proj(x) + y).mean((2, 3)))


class MixConv(nn.Module):
    """timm's MixedConv2d (MixNet): channels split into listed sizes held in `splits`, one depthwise
    kernel size per part, concatenated. `inline` writes the sizes in the forward instead."""

    def __init__(self, inline: bool = False) -> None:
        super().__init__()
        self.inline = inline
        self.splits = [8, 8, 16]
        self.stem = cbs(3, 32, 3)
        self.parts = nn.ModuleList(cbs(c, c, k, groups=c) for c, k in zip(self.splits, (3, 5, 7)))
        self.project = cbs(32, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        parts = torch.split(x, [8, 8, 16] if self.inline else self.splits, 1)
        x = torch.cat([m(p) for m, p in zip(self.parts, parts)], 1)
        return self.head(self.project(x).mean((2, 3)))


class GroupNormNet(nn.Module):
    """GroupNorm with 4 channels per group between convs (NFNet, detection heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.gn, self.c2 = nn.Conv2d(3, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c2(F.relu(self.gn(self.c1(x)))).mean((2, 3)))


IMAGE = (1, 3, 16, 16)
TOKENS = (1, 6, 8)
IDS = (1, 12)

#: replica name -> (model factory, example input maker)
REPLICAS = {
    "channel_shuffle": (ChannelShuffle, lambda: torch.randn(*IMAGE)),
    "window_attention": (WindowTransformer, lambda: torch.randn(1, 3, 8, 8)),
    "hf_attention": (HFEncoder, lambda: torch.randint(0, 100, IDS)),
    "gqa": (lambda: HFEncoder(kv_heads=2), lambda: torch.randint(0, 100, IDS)),
    "torch_mha": (TorchEncoder, lambda: torch.randn(*TOKENS)),
    "gpt2_conv1d": (GPT2Block, lambda: torch.randn(*TOKENS)),
    "glu": (GLU, lambda: torch.randn(*IMAGE)),
    "c2f": (lambda: nn.Sequential(cbs(3, 16, 3), C2f(16, 32), nn.Conv2d(32, 8, 1)), lambda: torch.randn(*IMAGE)),
    "detector": (Detector, lambda: torch.randn(*IMAGE)),
    "resnext": (ResNeXt, lambda: torch.randn(*IMAGE)),
    "regnet": (RegNet, lambda: torch.randn(*IMAGE)),
    "groupnorm": (GroupNormNet, lambda: torch.randn(*IMAGE)),
    "mixconv": (MixConv, lambda: torch.randn(*IMAGE)),
    "patch_vit": (PatchViT, lambda: torch.randn(*IMAGE)),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A replica in eval mode with non-trivial BatchNorm statistics, and its example inputs."""
    torch.manual_seed(seed)
    factory, inputs = REPLICAS[name]
    model = factory().eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model, (inputs(),)
