"""Hugging Face decoder language models (`*ForCausalLM` folders) in, a `save_pretrained` folder
out, cut to a budget on the time per generated token (pipeline/decoder/).

In: a `save_pretrained` folder of a Llama (SmolLM), Qwen2/2.5, Qwen3, Mistral, Phi-3 or Gemma 3
text model (or another family laid out like them, shape.Layout): loaded in float32 with eager
attention. Out: the folder with the cut config (`num_hidden_layers`, `num_attention_heads`,
`num_key_value_heads`, `intermediate_size`, `head_dim` stated, per-layer lists such as
`layer_types` trimmed), the kept weights, and the tokenizer and generation config as they were:
`AutoModelForCausalLM.from_pretrained` loads it without edgeprune.

This door claims a folder before the generic Hugging Face one (`priority`): a decoder's cost is
its time per token with a cache, not one forward of a fixed sequence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.ecosystems._transformers import KEPT_FILES, architecture_of, copy_kept, load_pretrained, read_config
from edgeprune.ecosystems.base import Ecosystem, register
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.pipeline.decoder.shape import Layout, Shape, shape_of
from edgeprune.pipeline.loaded import LoadedModel

#: config model_types laid out as Llama (q/k/v/o and gate/up/down projections in model.layers) or
#: as Phi-3 (fused qkv_proj, gate_up_proj): the families this door cuts
DECODER_TYPES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "olmo2",
    "smollm3",
    "granite",
)
#: tokens of the example prompt (what the calibration falls back to without --data)
EXAMPLE_TOKENS = 128
#: files the output keeps as they were, beside the tokenizer's
KEPT = (*KEPT_FILES, "generation_config.json")


@register
class CausalLmEcosystem(Ecosystem):
    name = "causal_lm"
    extra = "hf"
    packages = ("transformers",)
    output = "hf_model"
    priority = 10

    @classmethod
    def claims_path(cls, path: Path) -> bool:
        file = path / "config.json"
        if not (path.is_dir() and file.is_file()):
            return False
        try:
            raw = json.loads(file.read_text())
        except (OSError, ValueError):
            return False  # the Hugging Face door says what is wrong with it
        return isinstance(raw, dict) and raw.get("model_type") in DECODER_TYPES

    def load(
        self,
        path: Path | None,
        obj: Any,
        arch: str | None,
        input_shape: tuple[int, ...] | None,
        num_classes: int | None,
    ) -> LoadedModel:
        import transformers

        assert path is not None  # claimed by its folder
        config = read_config(path)
        architecture = architecture_of(config, path)
        if not architecture.endswith("ForCausalLM"):
            raise EdgepruneError(
                f"{path / 'config.json'} names {architecture}, a {config.model_type} without its language-model head: "
                "a decoder is cut to a budget on the time per generated token, which needs the head; save the model "
                "as AutoModelForCausalLM (its *ForCausalLM class) and pass that folder"
            )
        if num_classes is not None:
            raise EdgepruneError("--num-classes does not apply to a language model; drop it")
        if input_shape is not None:
            raise EdgepruneError(
                "--input-shape does not apply to a language model: its cost is per token at --context N "
                "(and --prompt-tokens P for the time to the first token); drop it"
            )
        shape, head_dim = shape_of(config, architecture)  # before loading: per-layer widths would fail inside it
        model = load_pretrained(getattr(transformers, architecture), path, architecture)
        layout = Layout.of(model, architecture)
        config_of: Any = model.config
        vocab = int(config_of.vocab_size)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (1, min(EXAMPLE_TOKENS, _max_positions(model.config))), generator=gen)
        try:
            with torch.no_grad():
                model(input_ids=ids)
        except Exception as err:  # noqa: BLE001 - a model that cannot run its own config: one line
            raise EdgepruneError(
                f"{architecture} from {path} fails on {ids.shape[1]} tokens ({type(err).__name__}: {first_line(err)})"
            ) from None
        return LoadedModel(
            model,
            (ids,),
            arch=None,
            num_classes=None,
            source=str(path),
            ecosystem=self.name,
            pipeline="decoder",
            input_names=("input_ids",),
            native={
                "folder": str(path.resolve()),
                "architecture": architecture,
                "model_type": config.model_type,
                "layout": layout.to_dict(),
                "shape": shape.to_dict(),
                "head_dim": head_dim,
                "vocab": vocab,
                "hidden": int(config_of.hidden_size),
                "max_positions": _max_positions(model.config),
            },
        )

    def save(self, pruned: nn.Module, loaded: LoadedModel, plan: Any, dest: Path) -> dict[str, Any]:
        native = loaded.native
        old, new = Shape.from_dict(native["shape"]), Shape.from_dict(plan["shape"])
        copied = self.write_folder(pruned, dest, Path(native["folder"]))
        return {
            "format": "Hugging Face save_pretrained folder",
            "load": f"transformers.AutoModelForCausalLM.from_pretrained('{self.output}')",
            "config_changes": new.config_changes(old),
            "removed_layers": [i for i in range(old.layers) if i not in plan["keep"]["layers"]],
            "copied": copied,
        }

    @staticmethod
    def write_folder(model: nn.Module, dest: Path, source: Path) -> list[str]:
        """`model` as a `save_pretrained` folder at `dest` with the tokenizer and generation config
        of the folder it came from (`source`); returns the files copied. Also how a cut model is
        handed to a builder that reads folders (pipeline/decoder/genai.py)."""
        dest.mkdir(parents=True)
        model.save_pretrained(str(dest), safe_serialization=True)  # type: ignore[operator]
        return copy_kept(source, dest, KEPT)


def _max_positions(config: Any) -> int:
    return int(getattr(config, "max_position_embeddings", None) or 2048)
