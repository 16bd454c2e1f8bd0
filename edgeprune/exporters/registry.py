"""Artifact formats (``onnx``, ...) mapped to `Exporter` classes; callers go through `get_exporter`."""

from __future__ import annotations

from typing import Any

from edgeprune.exporters.base import Exporter
from edgeprune.registry import Registry

EXPORTERS: Registry[Exporter] = Registry("export format", key="format")
register = EXPORTERS.register
exporter_formats = EXPORTERS.names


def get_exporter(format: str, **options: Any) -> Exporter:
    """A configured exporter for `format` (a runtime's `artifact_format`)."""
    return EXPORTERS.create(format, **options)
