"""What the two transformers doors (huggingface.py, causal_lm.py) share: reading a save_pretrained
folder's config and class, loading it in float32 with eager attention, and carrying the files
save_pretrained does not write (tokenizer, image processor, generation config) into the output."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.errors import EdgepruneError, first_line

#: files beside the weights that the pruned folder keeps as they are (tokenizer, image processor)
KEPT_FILES = (
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece*.model",
    "*.tiktoken",
    "chat_template*",
    "preprocessor_config.json",
    "processor_config.json",
    "image_processor*.json",
    "feature_extractor*.json",
    "video_preprocessor*.json",
)


def read_config(path: Path) -> Any:
    import transformers

    file = path / "config.json"
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise EdgepruneError(
            f"cannot read {file} ({first_line(err)}); pass a Hugging Face save_pretrained() folder"
        ) from None
    if (
        isinstance(raw, dict) and "model_type" not in raw and "architecture" in raw
    ):  # timm's hub folders hold a config.json too
        raise EdgepruneError(
            f"{file} is not a transformers config (no model_type; a timm model's?): for timm pass "
            "--arch timm:NAME and its weights file, for transformers a save_pretrained() folder"
        )
    try:
        return transformers.AutoConfig.from_pretrained(str(path))
    except Exception as err:  # noqa: BLE001 - an unknown model_type, a malformed file: one line
        raise EdgepruneError(
            f"transformers cannot read {path / 'config.json'} ({type(err).__name__}: {first_line(err)}); "
            "check it was written by save_pretrained() with this transformers version"
        ) from None


def load_pretrained(model_class: Any, path: Path, architecture: str) -> nn.Module:
    """The model in float32 with eager attention (plain matmul and softmax: traced, pruned and exported
    as any other layers), eval mode; transformers' progress bar kept off stderr meanwhile."""
    import transformers
    from transformers.utils import logging as hf_logging

    # `torch_dtype` became `dtype` in 4.56; every 4.x knows the old name, 5 warns on it
    dtype = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = model_class.from_pretrained(str(path), attn_implementation="eager", **{dtype: torch.float32})
    except Exception as err:  # noqa: BLE001 - missing or mismatched weights, an unsupported option: one line
        raise EdgepruneError(
            f"transformers cannot load {architecture} from {path} ({type(err).__name__}: {first_line(err)}); "
            "check the folder was written by save_pretrained() and holds its weights"
        ) from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.float().eval()


def architecture_of(config: Any, path: Path) -> str:
    import transformers

    names = getattr(config, "architectures", None) or []
    if not names:
        raise EdgepruneError(
            f"{path / 'config.json'} names no architectures, so the model class is unknown; save the model "
            'with model.save_pretrained() (which records its class) or add e.g. "architectures": '
            '["BertForSequenceClassification"]'
        )
    if not isinstance(getattr(transformers, names[0], None), type):
        raise EdgepruneError(
            f"{path / 'config.json'} names architecture {names[0]!r}, which transformers "
            f'{transformers.__version__} does not have; upgrade transformers or fix "architectures"'
        )
    return str(names[0])


def copy_kept(src: Path, dest: Path, patterns: Sequence[str] = KEPT_FILES) -> list[str]:
    """Tokenizer and image-processor files copied from the input folder (what save_pretrained did not write)."""
    copied = []
    for pattern in patterns:
        for f in sorted(src.glob(pattern)):
            if f.is_file() and not (dest / f.name).exists():
                shutil.copy2(f, dest / f.name)
                copied.append(f.name)
    return copied
