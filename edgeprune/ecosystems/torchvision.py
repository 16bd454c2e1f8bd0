"""torchvision by name: `--arch torchvision:NAME` with a state dict (or none, for latency alone);
the input size, mean and std from the model's default weights' transforms (their metadata, nothing
downloaded). Out: plan.json + state_dict.pt, which `edgeprune.load(out)` rebuilds."""

from __future__ import annotations

import functools
from typing import ClassVar

from torch import nn

from edgeprune.ecosystems._named import NamedArch
from edgeprune.ecosystems.base import Preprocess, register

#: ImageNet's, what torchvision's classification transforms use when a model has no weights entry
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@register
class Torchvision(NamedArch):
    name: ClassVar[str] = "torchvision"
    extra: ClassVar[str] = "torchvision"
    packages: ClassVar[tuple[str, ...]] = ("torchvision",)

    def names(self) -> list[str]:
        return _names()

    def create(self, name: str, num_classes: int | None) -> nn.Module:
        import torchvision.models as tvm

        return tvm.get_model(name, weights=None, **({} if num_classes is None else {"num_classes": num_classes}))

    def preprocess(self, model: nn.Module, name: str) -> Preprocess:
        import torchvision.models as tvm

        try:
            t = tvm.get_model_weights(name).DEFAULT.transforms()
            crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
            mean, std = tuple(t.mean), tuple(t.std)
            source = f"torchvision {name} default weights' transforms"
        except (ValueError, AttributeError, TypeError, IndexError):  # no weights entry, or transforms of another shape
            crop, resize, (mean, std) = 224, 256, _IMAGENET
            source = "torchvision's ImageNet defaults (the model has no weights entry)"
        return Preprocess(size=(crop, crop), mean=mean, std=std, source=source, crop_pct=crop / resize)


@functools.cache
def _names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models())
