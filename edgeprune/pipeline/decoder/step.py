"""What a decoder costs on the device, as modules the exporter and runtimes take like any other:
`DecodeStep` (one new token against a key/value cache of `context` tokens: the time per generated
token) and `Prefill` (a prompt of P tokens with no cache: the time to the first token).

The cache is explicit: `past.{i}.key` / `past.{i}.value` inputs and `present.{i}.*` outputs per
layer, (1, key/value heads, tokens, head_dim), the layout ONNX Runtime GenAI's decoders use; the
cache length is a dynamic axis, so the exported step is chained step after step (verify.py) and a
runtime grows the cache as it generates.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from edgeprune.pipeline.decoder.shape import Shape


def _cache_kwarg(model: nn.Module) -> str:
    """transformers 5.x calls the cache `cache`, 4.x `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _presents(out: Any, layers: int) -> list[torch.Tensor]:
    cache = getattr(out, "cache", None) or out.past_key_values
    presents: list[torch.Tensor] = []
    for i in range(layers):
        layer = cache.layers[i]
        presents += [layer.keys, layer.values]
    return presents


class DecodeStep(nn.Module):
    """input_ids (1, 1) and the cache -> next-token logits (1, 1, vocab) and the grown cache."""

    def __init__(self, model: nn.Module, layers: int) -> None:
        super().__init__()
        self.model, self.layers = model, layers
        self.kwarg = _cache_kwarg(model)

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache()  # every layer full: a sliding layer's mask still limits what it sees
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        seen, new = past[0].shape[2], input_ids.shape[1]
        out = self.model(
            input_ids=input_ids,
            position_ids=torch.arange(seen, seen + new).unsqueeze(0),
            attention_mask=torch.ones(1, seen + new, dtype=torch.long),
            use_cache=True,
            **{self.kwarg: cache},
        )
        return (out.logits, *_presents(out, self.layers))


class Prefill(nn.Module):
    """A prompt's input_ids (1, P) -> its logits and the cache it leaves."""

    def __init__(self, model: nn.Module, layers: int) -> None:
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=input_ids, use_cache=True)
        return (out.logits, *_presents(out, self.layers))


def step_names(layers: int) -> tuple[list[str], list[str]]:
    """The decode step's input and output names."""
    cache = [f"{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", *(f"past.{c}" for c in cache)], ["logits", *(f"present.{c}" for c in cache)]


def step_io(layers: int) -> dict[str, Any]:
    """Names and dynamic axes (the cache's length) for the ONNX exporter."""
    inputs, outputs = step_names(layers)
    dynamic = {n: {2: "past_tokens"} for n in inputs[1:]} | {n: {2: "total_tokens"} for n in outputs[1:]}
    return {"input_names": inputs, "output_names": outputs, "dynamic_axes": dynamic}


def step_inputs(shape: Shape, head_dim: int, vocab: int, context: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A token and a filled cache of `context` tokens (random: the cost does not depend on the values)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, 1), generator=gen)
    past = [torch.randn(1, shape.kv_heads, context, head_dim, generator=gen) for _ in range(2 * shape.layers)]
    return (ids, *past)


def kv_bytes(shape: Shape, head_dim: int, context: int, itemsize: int = 4) -> int:
    """The key/value cache at `context` tokens, float32 unless `itemsize` says otherwise."""
    return 2 * shape.layers * shape.kv_heads * context * head_dim * itemsize


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters as stored (tied embeddings once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total
