"""Artifact formats (``onnx``, ...) mapped to `Exporter` classes, like `runtime_bench.registry`.

An exporter registers itself with `@register` in its own module and `exporters/__init__.py`
imports that module: adding a format is one file plus one import line.
"""
from __future__ import annotations

import inspect
from typing import Any, TypeVar

from edgeprune.errors import EdgepruneError
from edgeprune.exporters.base import Exporter

E = TypeVar("E", bound=type[Exporter])

_EXPORTERS: dict[str, type[Exporter]] = {}


def register(cls: E) -> E:
    """Class decorator: make `cls` reachable as `get_exporter(cls.format)`."""
    if not cls.format:
        raise TypeError(f"{cls.__qualname__} has no `format`; set one before registering it")
    known = _EXPORTERS.get(cls.format)
    if known is not None and known is not cls:
        raise TypeError(f"format {cls.format!r} is taken by {known.__qualname__}")
    _EXPORTERS[cls.format] = cls
    return cls


def exporter_formats() -> list[str]:
    return sorted(_EXPORTERS)


def get_exporter(format: str, **options: Any) -> Exporter:
    """A configured exporter for `format` (a runtime's `artifact_format`); unknown ones are user errors."""
    cls = _EXPORTERS.get(format)
    if cls is None:
        raise EdgepruneError(f"unknown export format {format!r}; known formats: {', '.join(exporter_formats())}")
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as e:
        raise EdgepruneError(f"exporter {format!r} does not accept options {sorted(options)}: {e}") from e
    return cls(**options)
