"""What a Hugging Face model is fed: its example inputs, built from its config and processor files
by one builder per kind of input, chosen by the name of the forward's first parameter (how
transformers itself tells a text model from a vision or an audio one). A new kind of input is one
function registered with `@kind(name)`; the door never branches on the modality.

- `input_ids`: token ids and an attention mask of ones, batch 1, 128 tokens unless --input-shape
  says BATCHxTOKENS (capped by max_position_embeddings);
- `pixel_values`: an image of the size the image processor (preprocessor_config.json) or the config
  gives, with the processor's normalisation recorded (`Preprocess`) for `--data` images;
- `input_values`: audio. A raw waveform (Wav2Vec2, HuBERT, WavLM: batch x samples, one second at the
  feature extractor's sampling rate unless --input-shape says), or, where the config states mel
  bins and frames (the Audio Spectrogram Transformer), the spectrogram it takes (batch x frames x
  bins). A single unpadded example needs no attention mask, so none is passed.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.pipeline.loaded import Preprocess, check_allocatable

#: tokens per example when --input-shape does not say (capped by the model's max_position_embeddings)
DEFAULT_TOKENS = 128
#: audio seconds per example when --input-shape does not say
DEFAULT_SECONDS = 1.0
#: the sampling rate of a waveform model whose folder has no feature extractor config (Wav2Vec2's)
DEFAULT_SAMPLING_RATE = 16000
PREPROCESS_SOURCE = "Hugging Face image processor (preprocessor_config.json)"


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Example inputs in the forward's order, their names, the image preprocessing if any, and one
    phrase saying what they are (for the log and the report)."""

    tensors: tuple[torch.Tensor, ...]
    names: tuple[str, ...]
    preprocess: Preprocess | None
    what: str


@dataclasses.dataclass(frozen=True)
class Request:
    """What a builder is given: the loaded config, the folder, the --input-shape (None: the
    model's own), the class name for messages, and the forward's positional parameter names."""

    config: Any
    path: Path
    shape: tuple[int, ...] | None
    architecture: str
    params: tuple[str, ...]

    def shape_error(self, takes: str, example: str) -> EdgepruneError:
        given = "x".join(map(str, self.shape or ()))
        return EdgepruneError(f"--input-shape {given}: {self.architecture} takes {takes}, e.g. {example}")


Builder = Callable[[Request], Inputs]
KINDS: dict[str, tuple[str, Builder]] = {}


def kind(first: str, what: str) -> Callable[[Builder], Builder]:
    """Register the builder of the inputs of models whose forward takes `first` first."""

    def add(fn: Builder) -> Builder:
        KINDS[first] = (what, fn)
        return fn

    return add


def example_inputs(
    model: nn.Module, config: Any, path: Path, shape: tuple[int, ...] | None, architecture: str
) -> Inputs:
    """The example inputs of `model`, by the kind of its forward's first parameter."""
    params = tuple(
        p.name
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )
    first = params[0] if params else ""
    if first not in KINDS:
        known = ", ".join(f"{name} ({what})" for name, (what, _) in KINDS.items())
        raise EdgepruneError(
            f"{architecture}'s forward takes {first or 'nothing'} first; edgeprune's Hugging Face door runs models "
            f"that take {known}; export it to ONNX or torch.save() the module with --input-shape instead"
        )
    return KINDS[first][1](Request(config, path, shape, architecture, params))


def _random(shape: tuple[int, ...], high: int | None = None) -> torch.Tensor:
    """A seeded example tensor (token ids below `high`, else normal floats), its size checked first."""
    check_allocatable(shape)
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, high, shape, generator=gen) if high is not None else torch.randn(*shape, generator=gen)


@kind("input_ids", "text")
def _tokens(r: Request) -> Inputs:
    most = getattr(r.config, "max_position_embeddings", None)
    shape = r.shape
    if shape is None:
        shape = (1, min(DEFAULT_TOKENS, most) if isinstance(most, int) else DEFAULT_TOKENS)
    elif len(shape) == 1:
        shape = (1, *shape)
    if len(shape) != 2:
        raise r.shape_error("token ids, BATCHxTOKENS", "1x128")
    if isinstance(most, int) and shape[1] > most:
        raise r.shape_error(f"at most {most} tokens (max_position_embeddings); pass fewer", "1x128")
    ids = _random(shape, r.config.vocab_size)
    what = f"token ids, {shape[1]} tokens"
    if len(r.params) > 1 and r.params[1] == "attention_mask":
        return Inputs((ids, torch.ones(shape, dtype=torch.long)), ("input_ids", "attention_mask"), None, what)
    return Inputs((ids,), ("input_ids",), None, what)


@kind("pixel_values", "images")
def _images(r: Request) -> Inputs:
    preprocess = _preprocess(r.path, r.config)
    channels = getattr(r.config, "num_channels", 3)
    shape = r.shape
    if shape is None:
        size = preprocess.size if preprocess is not None else _pair(getattr(r.config, "image_size", None))
        if size is None:
            raise EdgepruneError(
                f"{r.architecture}: the image size is unknown (no image_size in config.json, no "
                "preprocessor_config.json); pass --input-shape, e.g. 1x3x224x224"
            )
        shape = (1, channels, *size)
    if len(shape) != 4:
        raise r.shape_error("images, NxCxHxW", f"1x{channels}x224x224")
    what = f"images, {shape[2]}x{shape[3]} px"
    return Inputs((_random(shape),), ("pixel_values",), preprocess, what)


@kind("input_values", "audio")
def _audio(r: Request) -> Inputs:
    bins, frames = getattr(r.config, "num_mel_bins", None), getattr(r.config, "max_length", None)
    if isinstance(bins, int) and isinstance(frames, int):  # a spectrogram model (AST): frames x mel bins
        shape = r.shape or (1, frames, bins)
        if len(shape) != 3:
            raise r.shape_error("spectrograms, BATCHxFRAMESxBINS", f"1x{frames}x{bins}")
        what = f"audio spectrogram, {shape[1]} frames x {shape[2]} mel bins"
    else:
        rate = _sampling_rate(r.path)
        shape = r.shape or (1, round(rate * DEFAULT_SECONDS))
        if len(shape) == 1:
            shape = (1, *shape)
        if len(shape) != 2:
            raise r.shape_error("waveforms, BATCHxSAMPLES", f"1x{rate}")
        what = f"audio waveform, {shape[1]} samples ({shape[1] / rate:g} s at {rate} Hz)"
    return Inputs((_random(shape),), ("input_values",), None, what)


def _processor_config(path: Path) -> dict[str, Any] | None:
    """preprocessor_config.json as a dict, None when the folder has none."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return None
    try:
        found = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise EdgepruneError(f"cannot read {file} ({first_line(err)}); fix or remove it") from None
    return found if isinstance(found, dict) else None


def _sampling_rate(path: Path) -> int:
    """The feature extractor's sampling rate (preprocessor_config.json), else Wav2Vec2's 16 kHz."""
    rate = (_processor_config(path) or {}).get("sampling_rate")
    return rate if isinstance(rate, int) and rate > 0 else DEFAULT_SAMPLING_RATE


def _preprocess(path: Path, config: Any) -> Preprocess | None:
    """The image processor's size, crop and normalisation (preprocessor_config.json), where it has them."""
    pp = _processor_config(path)
    if pp is None:
        return None
    mean, std = pp.get("image_mean"), pp.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list)):
        return None
    resize = pp.get("size")
    crop = _pair(pp.get("crop_size")) if pp.get("do_center_crop") else None
    size = crop or _pair(resize) or _pair(getattr(config, "image_size", None))
    if size is None:
        return None
    shortest = resize.get("shortest_edge") if isinstance(resize, dict) else None
    crop_pct = pp.get("crop_pct") or (min(size) / shortest if crop and isinstance(shortest, int) else 1.0)
    normalise = pp.get("do_normalize", True)
    return Preprocess(
        size=size,
        mean=tuple(map(float, mean)) if normalise else None,
        std=tuple(map(float, std)) if normalise else None,
        source=PREPROCESS_SOURCE,
        crop_pct=float(crop_pct),
    )


def _pair(size: Any) -> tuple[int, int] | None:
    """(H, W) from an image processor's or config's size: an int, [H, W], {height, width} or {shortest_edge}."""
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return (size[0], size[1])
    if isinstance(size, dict):
        if isinstance(size.get("height"), int) and isinstance(size.get("width"), int):
            return (size["height"], size["width"])
        if isinstance(size.get("shortest_edge"), int):
            return (size["shortest_edge"], size["shortest_edge"])
    return None
