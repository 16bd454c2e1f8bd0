"""Doors in and out for models as their libraries save them (base.py: the `Ecosystem` interface).

Each library is one file that registers itself; none imports its library until such a model arrives.
"""

from edgeprune.ecosystems import (  # noqa: F401 - each registers itself
    causal_lm,
    huggingface,
    timm,
    torchvision,
    ultralytics,
)
from edgeprune.ecosystems.base import (
    ECOSYSTEMS,
    Constraint,
    Ecosystem,
    Preprocess,
    ecosystem,
    for_arch,
    for_missing_module,
    for_object,
    for_path,
)

__all__ = [
    "ECOSYSTEMS",
    "Constraint",
    "Ecosystem",
    "Preprocess",
    "ecosystem",
    "for_arch",
    "for_missing_module",
    "for_object",
    "for_path",
]
