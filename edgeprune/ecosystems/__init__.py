"""Doors in and out for models as their libraries save them (base.py: the `Ecosystem` interface).

Each library is one file here that registers itself (its pip extra and claim priority declared in
it); every module of this package not named with a leading underscore is imported below, so adding
a door is adding its file. None imports its library until such a model arrives.
"""

import importlib
import pkgutil

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

for _door in pkgutil.iter_modules(__path__):
    if not _door.name.startswith("_") and _door.name != "base":
        importlib.import_module(f"{__name__}.{_door.name}")

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
