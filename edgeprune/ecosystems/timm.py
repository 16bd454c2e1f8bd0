"""timm by name: `--arch timm:NAME` with a state dict (or none, for latency alone); the input size,
mean, std and crop from the model's `pretrained_cfg`. Out: plan.json + state_dict.pt, which
`edgeprune.load(out)` rebuilds from the named architecture."""

from __future__ import annotations

import functools
from typing import ClassVar

from torch import nn

from edgeprune.ecosystems._named import NamedArch
from edgeprune.ecosystems.base import Preprocess, register


@register
class Timm(NamedArch):
    name: ClassVar[str] = "timm"
    extra: ClassVar[str] = "timm"
    packages: ClassVar[tuple[str, ...]] = ("timm",)

    def names(self) -> list[str]:
        return _names()

    def create(self, name: str, num_classes: int | None) -> nn.Module:
        import timm

        return timm.create_model(
            name, pretrained=False, **({} if num_classes is None else {"num_classes": num_classes})
        )

    def preprocess(self, model: nn.Module, name: str) -> Preprocess:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = tuple(cfg.get("input_size", (3, 224, 224)))[1:]
        return Preprocess(
            size=(int(size[0]), int(size[1])),
            mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
            source=f"timm pretrained_cfg of {name}",
            crop_pct=float(cfg.get("crop_pct", 1.0)),
        )


@functools.cache
def _names() -> list[str]:
    import timm

    return sorted(timm.list_models())
