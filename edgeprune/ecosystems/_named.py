"""Plumbing shared by the doors that build an architecture by name (`--arch timm:resnet50`,
`--arch torchvision:mobilenet_v3_large`): random weights or a state dict file, the input size and
normalisation from the library's own config, and `edgeprune.load` rebuilding the pruned model from
plan.json (its `arch`) and state_dict.pt, so their back door is those two files."""

from __future__ import annotations

import abc
import dataclasses
import difflib
from pathlib import Path
from typing import Any

from torch import nn

from edgeprune.ecosystems.base import Ecosystem, Preprocess
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.pipeline.loaded import classes_from_state, from_module, load_state, read_state


class NamedArch(Ecosystem):
    """A library that builds models by name; `output` is None: plan.json + state_dict.pt suffice."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """Every model name the library builds."""

    @abc.abstractmethod
    def create(self, name: str, num_classes: int | None) -> nn.Module:
        """The named model with random weights (and `num_classes` outputs when given)."""

    @abc.abstractmethod
    def preprocess(self, model: nn.Module, name: str) -> Preprocess:
        """The model's input size and normalisation from the library's own config."""

    def model_name(self, arch: str) -> str:
        """The NAME of `LIB:NAME`, refused in one line when the library has no such model."""
        name = arch.partition(":")[2]
        known = self.names()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise EdgepruneError(
                f"--arch {arch}: {self.name} has no model {name!r}{hint}; "
                f"pick one of {self.name}'s model names, e.g. {self.name}:{known[0]}"
            )
        return name

    def build(self, arch: str, num_classes: int | None) -> nn.Module:
        name = self.model_name(arch)
        try:
            return self.create(name, num_classes)
        except Exception as err:  # noqa: BLE001 - the library's own refusal (options, downloads): one line
            raise EdgepruneError(
                f"{self.name} could not build {name} ({type(err).__name__}: {first_line(err)}); "
                "pick another model or pass --num-classes"
            ) from None

    def load(
        self,
        path: Path | None,
        obj: Any,
        arch: str | None,
        input_shape: tuple[int, ...] | None,
        num_classes: int | None,
    ) -> Any:
        assert arch is not None
        name = self.model_name(arch)
        state = read_state(path) if path is not None else None
        num_classes = num_classes or (classes_from_state(state) if state is not None else None)
        model = self.build(arch, num_classes)
        if state is not None:
            load_state(model, state, str(path), arch)
        pre = self.preprocess(model, name)
        shape = input_shape or (1, 3, *pre.size)
        pre = dataclasses.replace(pre, size=(int(shape[-2]), int(shape[-1])))  # --input-shape: the size it ships at
        source = str(path) if path is not None else f"{arch} (random weights)"
        loaded = from_module(model.eval(), input_shape=shape, arch=arch, num_classes=num_classes, source=source)
        return dataclasses.replace(
            loaded,
            ecosystem=self.name,
            preprocess=pre,
            input_names=("pixel_values",),
            native={"arch": arch, "num_classes": num_classes},
        )
