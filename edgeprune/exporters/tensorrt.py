"""TensorRT engines (``engine`` format) built from the verified ONNX, for GPU hosts.

The model is exported to ONNX (exporters/onnx.py), parsed by TensorRT's ONNX parser and built into
a serialized engine for the GPU of the host that builds it (engines are not portable across GPU
models or TensorRT versions: build where you deploy). `fp16` lets the builder pick FP16 kernels
where faster; the runtime then checks outputs at a looser tolerance. TensorRT is not installable on
the machines this project is developed on (its PyPI package fetches from NVIDIA's index), so this
path has not been run there; the runtime says so instead of failing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from edgeprune.atomic import atomic_path
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.exporters.base import Artifact, Exporter
from edgeprune.exporters.onnx import OnnxExporter
from edgeprune.exporters.registry import register
from edgeprune.runtime_bench.tensorrt import tensorrt_missing

WORKSPACE_BYTES = 1 << 30


@register
class TensorRtExporter(Exporter):
    format = "engine"
    suffix = "engine"

    def __init__(self, fp16: bool = False) -> None:
        self.fp16 = fp16

    def export(self, model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], out_path: Path) -> Artifact:
        missing = tensorrt_missing()
        if missing:
            raise EdgepruneError(missing)
        import tensorrt as trt

        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = OnnxExporter().export(model, example_inputs, Path(tmp) / "model.onnx").path
            logger = trt.Logger(trt.Logger.WARNING)
            builder = trt.Builder(logger)
            network = builder.create_network(0)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse(onnx_path.read_bytes()):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise EdgepruneError(f"TensorRT cannot parse the ONNX export: {first_line(errors)}")
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
            if self.fp16:
                config.set_flag(trt.BuilderFlag.FP16)
            engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise EdgepruneError("TensorRT could not build an engine for this model (see its log above)")
        with atomic_path(out_path) as tmp_path:
            tmp_path.write_bytes(bytes(engine))
        return Artifact(
            Path(out_path), self.format, {"exporter": "onnx + tensorrt", "fp16": self.fp16, "tensorrt": trt.__version__}
        )

    def verify(self, artifact: Artifact, model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> float:
        from edgeprune import modelrun
        from edgeprune.runtime_bench.tensorrt import TensorRtRuntime

        rt = TensorRtRuntime(precision="fp16" if self.fp16 else "fp32")
        got = rt.run(rt.load(str(artifact.path)), [t.numpy() for t in inputs])
        return max(float(abs(torch.from_numpy(g) - w.float()).max()) for g, w in zip(got, modelrun.run(model, inputs)))
