"""Which heads, key/value groups, MLP channels and layers a decoder can spare, from its activations
on calibration tokens (as Minitron scores them: no gradients, one pass).

- a query head: the mean L2 norm of its slice of the attention output (the o_proj input);
  a key/value group: the sum over its query heads;
- an MLP channel: the mean |activation| entering down_proj;
- a layer: its block influence, 1 - cos(hidden in, hidden out) averaged over tokens (ShortGPT):
  a layer that barely turns the residual stream is the one to drop.
Scores stay per layer (each layer keeps its own best heads and channels); the search compares
shapes, which are uniform, by what each costs the outputs (search.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.pipeline.decoder.shape import Layout, Shape


def scores(
    model: nn.Module, layout: Layout, shape: Shape, head_dim: int, batches: Iterable[torch.Tensor]
) -> dict[str, Any]:
    """{"heads": [L][H], "channels": [L][I], "layers": [L]} (JSON-ready lists)."""
    stack = model.get_submodule(layout.layers)
    assert isinstance(stack, nn.ModuleList), f"{layout.layers} is not the layers' ModuleList"
    n = len(stack)
    heads = [torch.zeros(shape.heads) for _ in range(n)]
    channels = [torch.zeros(shape.intermediate) for _ in range(n)]
    turn = torch.zeros(n)
    counts = {"tokens": 0}
    hooks = []
    inputs: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(stack):

        def on_o(_m: nn.Module, args: tuple[Any, ...], i: int = i) -> None:
            x = args[0].detach().reshape(-1, shape.heads, head_dim)
            heads[i] += x.norm(dim=-1).sum(0)

        def on_down(_m: nn.Module, args: tuple[Any, ...], i: int = i) -> None:
            channels[i] += args[0].detach().reshape(-1, shape.intermediate).abs().sum(0)

        def on_in(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], i: int = i) -> None:
            inputs[i] = (args[0] if args else kwargs["hidden_states"]).detach()

        def on_out(_m: nn.Module, _a: Any, out: Any, i: int = i) -> None:
            h = out[0] if isinstance(out, (tuple, list)) else out
            x, y = inputs.pop(i).reshape(-1, h.shape[-1]), h.detach().reshape(-1, h.shape[-1])
            turn[i] += (1 - nn.functional.cosine_similarity(x, y, dim=-1)).sum()

        hooks += [
            layer.get_submodule(layout.o).register_forward_pre_hook(on_o),
            layer.get_submodule(layout.down).register_forward_pre_hook(on_down),
            layer.register_forward_pre_hook(on_in, with_kwargs=True),
            layer.register_forward_hook(on_out),
        ]
    try:
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids)
                counts["tokens"] += ids.numel()
    finally:
        for h in hooks:
            h.remove()
    t = max(counts["tokens"], 1)
    return {
        "heads": [(h / t).tolist() for h in heads],
        "channels": [(c / t).tolist() for c in channels],
        "layers": (turn / t).tolist(),
        "tokens": counts["tokens"],
    }


def kept(s: dict[str, Any], old: Shape, new: Shape) -> dict[str, Any]:
    """Which layers, and in each kept layer which key/value groups, query heads (grouped by their
    new group, in order) and MLP channels `new` keeps: the highest-scoring of each, per layer."""
    layer_scores = np.asarray(s["layers"])
    layers = sorted(np.argsort(-layer_scores, kind="stable")[: new.layers].tolist())
    out: dict[str, Any] = {"layers": layers, "heads": {}, "channels": {}}
    for i in layers:
        h = np.asarray(s["heads"][i]).reshape(old.kv_heads, old.q_per_kv)
        groups = sorted(np.argsort(-h.sum(1), kind="stable")[: new.kv_heads].tolist())
        out["heads"][str(i)] = [
            g * old.q_per_kv + q for g in groups for q in sorted(np.argsort(-h[g], kind="stable")[: new.q_per_kv])
        ]
        out["channels"][str(i)] = sorted(np.argsort(-np.asarray(s["channels"][i]), kind="stable")[: new.intermediate])
    out["heads"] = {k: [int(x) for x in v] for k, v in out["heads"].items()}
    out["channels"] = {k: [int(x) for x in v] for k, v in out["channels"].items()}
    return out
