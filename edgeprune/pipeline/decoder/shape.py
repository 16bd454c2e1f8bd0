"""A decoder language model's shape (what its config states and the runtime's cost follows) and
where each family keeps the parts that shape sizes (`Layout`).

A config states one width per kind for every layer: `num_key_value_heads` key/value groups,
`num_attention_heads` query heads (a whole number per group: the GQA kernels repeat each key/value
head for its group), `intermediate_size` MLP channels and `num_hidden_layers` layers; `head_dim`
stays (RoPE and the attention kernels are built on it) and is written out explicitly, since
transformers derives it from hidden_size / num_attention_heads where a config leaves it out. So a
pruned decoder is a `Shape`, uniform across layers, which every runtime loads; which heads and
channels each layer keeps is the layer's own (plan.json lists them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from edgeprune.errors import EdgepruneError


@dataclasses.dataclass(frozen=True, order=True)
class Shape:
    """The widths a config states; `heads` = kv_heads x q_per_kv."""

    layers: int
    kv_heads: int
    q_per_kv: int
    intermediate: int

    @property
    def heads(self) -> int:
        return self.kv_heads * self.q_per_kv

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self) | {"heads": self.heads}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Shape:
        return cls(d["layers"], d["kv_heads"], d["q_per_kv"], d["intermediate"])

    def describe(self) -> str:
        return (
            f"{self.layers} layers, {self.heads} query heads in {self.kv_heads} key/value groups, "
            f"MLP {self.intermediate}"
        )

    def config_changes(self, old: Shape) -> dict[str, list[int]]:
        """The config keys this shape changes, [before, after] (what report.json shows)."""
        pairs = {
            "num_hidden_layers": (old.layers, self.layers),
            "num_attention_heads": (old.heads, self.heads),
            "num_key_value_heads": (old.kv_heads, self.kv_heads),
            "intermediate_size": (old.intermediate, self.intermediate),
        }
        return {k: [a, b] for k, (a, b) in pairs.items() if a != b}


@dataclasses.dataclass(frozen=True)
class Layout:
    """Module names inside one decoder layer, relative to it (Llama's `self_attn.q_proj`); a fused
    projection (Phi-3's `self_attn.qkv_proj`, `mlp.gate_up_proj`) in place of the separate ones."""

    layers: str  # the ModuleList of layers, e.g. model.layers
    o: str
    down: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    gate: str | None = None
    up: str | None = None
    gate_up: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, model: nn.Module, architecture: str) -> Layout:
        """The layout found in `model`: the layer list and each layer's projections by their names in
        transformers (q/k/v/o_proj or qkv_proj; gate/up/down_proj or gate_up_proj), else one line."""
        layers = next(
            (
                name
                for name, m in model.named_modules()
                if isinstance(m, nn.ModuleList) and name.endswith("layers") and len(m) > 0
            ),
            None,
        )
        if layers is None:
            raise EdgepruneError(f"{architecture}: no list of decoder layers (…layers) found; edgeprune cannot cut it")
        stack = model.get_submodule(layers)
        assert isinstance(stack, nn.ModuleList)
        first = dict(stack[0].named_modules())

        def has(*names: str) -> bool:
            return all(isinstance(first.get(n), nn.Linear) for n in names)

        attn = next((p for p in ("self_attn", "attention", "attn") if p in first), "self_attn")
        mlp = next((p for p in ("mlp", "feed_forward") if p in first), "mlp")
        parts: dict[str, str] = {}
        if has(f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"):
            parts |= {"q": f"{attn}.q_proj", "k": f"{attn}.k_proj", "v": f"{attn}.v_proj"}
        elif has(f"{attn}.qkv_proj"):
            parts |= {"qkv": f"{attn}.qkv_proj"}
        if has(f"{mlp}.gate_proj", f"{mlp}.up_proj"):
            parts |= {"gate": f"{mlp}.gate_proj", "up": f"{mlp}.up_proj"}
        elif has(f"{mlp}.gate_up_proj"):
            parts |= {"gate_up": f"{mlp}.gate_up_proj"}
        if not has(f"{attn}.o_proj", f"{mlp}.down_proj") or len(parts) < 2:
            raise EdgepruneError(
                f"{architecture}: its layers do not have the q/k/v/o and gate/up/down projections (or Phi-3's fused "
                "qkv_proj and gate_up_proj) edgeprune's decoder door cuts; export it to ONNX to measure it, or "
                "pass a Llama, Qwen2/3, Mistral, Phi-3 or Gemma 3 folder"
            )
        return cls(layers=layers, o=f"{attn}.o_proj", down=f"{mlp}.down_proj", **parts)


def shape_of(config: Any, architecture: str) -> tuple[Shape, int]:
    """The config's shape and its head_dim; a config with per-layer widths (lists) is refused."""
    values = {
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
    }
    lists = [k for k, v in values.items() if not isinstance(v, int)]
    if lists:
        raise EdgepruneError(
            f"{architecture}'s config gives {', '.join(lists)} per layer, not one for all: edgeprune cuts decoders "
            "to uniform widths that every runtime loads, so it takes configs with one width per kind"
        )
    heads, kv = values["num_attention_heads"], values["num_key_value_heads"]
    if heads % kv:
        raise EdgepruneError(f"{architecture}: {heads} query heads do not split into {kv} key/value groups")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return Shape(values["num_hidden_layers"], kv, heads // kv, values["intermediate_size"]), int(head_dim)
