"""Cutting a decoder to a `Shape`: a fresh model of the same class built from the config with the
new widths, holding the rows and columns each kept layer chose (importance.kept), loaded strictly
(a tensor of the wrong size is an error here, not a silently different model)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from edgeprune.pipeline.decoder.shape import Layout, Shape


def cut(model: nn.Module, layout: Layout, old: Shape, new: Shape, head_dim: int, keep: dict[str, Any]) -> nn.Module:
    """A new model of `model`'s class with shape `new`, its weights the kept parts of `model`'s."""
    config = shaped_config(model.config, new, head_dim, [i for i in range(old.layers) if i not in keep["layers"]])
    pruned = type(model)(config)
    prefix = layout.layers + "."
    new_index = {old_i: j for j, old_i in enumerate(keep["layers"])}
    state: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        if not key.startswith(prefix):
            state[key] = t
            continue
        index, _, rest = key[len(prefix) :].partition(".")
        i = int(index)
        if i in new_index:
            rows = _Rows(old, head_dim, keep["heads"][str(i)], keep["channels"][str(i)])
            state[f"{prefix}{new_index[i]}.{rest}"] = rows.sliced(layout, rest, t)
    pruned.load_state_dict(state, strict=True)
    return pruned.eval()


def shaped_config(config: Any, new: Shape, head_dim: int, gone: list[int]) -> Any:
    """A copy of `config` stating `new` (head_dim explicit), without the layers in `gone`."""
    config = copy.deepcopy(config)
    drop_layers(config, gone)
    config.num_attention_heads, config.num_key_value_heads = new.heads, new.kv_heads
    config.intermediate_size, config.head_dim = new.intermediate, head_dim
    return config


def expressible(config: Any, new: Shape, head_dim: int) -> bool:
    """Whether the config class accepts `new`: transformers 5 validates some families' configs
    (Llama, Gemma 2 and 3: the hidden size a multiple of the query heads), and a folder it refuses
    to load is no output."""
    shaped = shaped_config(config, new, head_dim, list(range(new.layers, config.num_hidden_layers)))
    validate = getattr(shaped, "validate", None)
    if validate is None:
        return True
    try:
        validate()
    except Exception:  # noqa: BLE001 - huggingface_hub's validation error wraps ValueError/TypeError
        return False
    return True


def drop_layers(config: Any, gone: list[int]) -> None:
    """num_hidden_layers lowered, and the per-layer lists some configs hold (layer_types) kept in step."""
    count = config.num_hidden_layers
    for key, value in config.to_dict().items():
        if isinstance(value, list) and len(value) == count and key != "architectures":
            setattr(config, key, [v for i, v in enumerate(value) if i not in gone])
    config.num_hidden_layers = count - len(gone)


class _Rows:
    """The rows (output features) and columns (input features) one layer keeps of each projection."""

    def __init__(self, old: Shape, head_dim: int, heads: list[int], channels: list[int]) -> None:
        def span(units: list[int], offset: int = 0) -> list[int]:
            return [offset + u * head_dim + d for u in units for d in range(head_dim)]

        groups = list(dict.fromkeys(h // old.q_per_kv for h in heads))  # in the order the kept heads use them
        self.q, self.kv = span(heads), span(groups)
        q_size, kv_size = old.heads * head_dim, old.kv_heads * head_dim
        self.qkv = self.q + span(groups, q_size) + span(groups, q_size + kv_size)
        self.mlp = channels
        self.gate_up = channels + [old.intermediate + c for c in channels]

    def sliced(self, layout: Layout, name: str, t: torch.Tensor) -> torch.Tensor:
        module, _, _param = name.rpartition(".")
        by_rows = {layout.q: self.q, layout.k: self.kv, layout.v: self.kv, layout.qkv: self.qkv}
        by_rows |= {layout.gate: self.mlp, layout.up: self.mlp, layout.gate_up: self.gate_up}
        by_rows.pop(None, None)
        if module in by_rows:
            return t[by_rows[module]].clone()
        if module == layout.o and t.dim() == 2:
            return t[:, self.q].clone()
        if module == layout.down and t.dim() == 2:
            return t[:, self.mlp].clone()
        return t
