"""The `Exporter` interface: turn a (pruned) nn.Module into a deployable file, and prove it matches."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class Artifact:
    """An exported model on disk.

    `meta` records how it was made (exporter, opset, whether it was simplified) so a report can say
    so; it is left out of the hash because a dict cannot be hashed.
    """

    path: Path
    format: str  # "onnx", "ort", "pte", "engine", ...
    meta: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)


class Exporter(abc.ABC):
    format: str = ""
    #: the file extension its artifacts get (without the dot)
    suffix: str = ""

    @abc.abstractmethod
    def export(self, model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], out_path: Path) -> Artifact:
        """Write `model` to `out_path` atomically (a failed export leaves no file behind)."""

    @abc.abstractmethod
    def verify(self, artifact: Artifact, model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> float:
        """Max absolute difference between the artifact's outputs and PyTorch's on `inputs`."""
