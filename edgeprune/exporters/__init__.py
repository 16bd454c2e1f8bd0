"""Turn a (pruned) model into a deployable file and prove it matches PyTorch; `get_exporter(format)`.

Each exporter module registers itself on import, so adding one means one file and one line here.
"""

from edgeprune.exporters import executorch, tensorrt, torch_module  # noqa: F401  (registration)
from edgeprune.exporters.base import Artifact, Exporter
from edgeprune.exporters.onnx import OnnxExporter, onnx_initializer_shapes, onnx_param_count
from edgeprune.exporters.registry import exporter_formats, get_exporter

__all__ = [
    "Artifact",
    "Exporter",
    "OnnxExporter",
    "exporter_formats",
    "get_exporter",
    "onnx_initializer_shapes",
    "onnx_param_count",
]
