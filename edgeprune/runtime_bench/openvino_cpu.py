"""OpenVINO on the CPU (``openvino-cpu``), reading the ONNX file directly, at an explicit precision.

OpenVINO's default on CPUs with bf16 units (AMX, AVX512-BF16) is to run in bf16: measured on such a
host, a ResNet-18 ran 6x faster than at f32 with a max output difference of 2.3e-3. A latency that
silently changes the numerics is not a fair budget, so the precision is explicit here: ``f32``
(the default, and what verification against PyTorch assumes) or ``bf16`` (opt-in, refused on CPUs
without bf16 units, where OpenVINO would emulate it; its output difference is reported, and checked
against a looser tolerance). One stream, a latency hint and `threads` inference threads match the
other runtimes' single-request protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.runtime_bench.base import LatencyStats, Runtime, time_calls
from edgeprune.runtime_bench.registry import register

PRECISIONS = ("f32", "bf16")


@register
class OpenVinoCpuRuntime(Runtime):
    name = "openvino-cpu"
    artifact_format = "onnx"
    spec_option = "precision"

    def __init__(self, threads: int = 1, precision: str = "f32") -> None:
        super().__init__(threads)
        if precision not in PRECISIONS:
            raise EdgepruneError(f"openvino-cpu precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.precision = precision
        # bf16 rounds activations to 8 mantissa bits: ~1e-2 relative differences are its normal
        self.rtol = 1e-3 if precision == "f32" else 5e-2

    @property
    def reduced_precision(self) -> bool:
        return self.precision == "bf16"

    def available(self) -> tuple[bool, str]:
        try:
            import openvino as ov
        except ImportError as e:
            return False, f"openvino is not importable ({first_line(e)}); pip install 'edgeprune[cpu-runtimes]'"
        core = ov.Core()
        if "CPU" not in core.available_devices:
            return False, "OpenVINO sees no CPU device on this host"
        if self.precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return False, "this CPU has no bf16 units (OpenVINO would emulate bf16, slower than f32); use precision f32"
        return True, ""

    def load(self, artifact_path: str) -> Any:
        path = self.checked_path(artifact_path)
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "INFERENCE_NUM_THREADS": self.threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        try:
            compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError with a multi-line C++ message for any defect
            raise EdgepruneError(f"{path}: OpenVINO cannot compile it ({first_line(e)}); re-export the model") from e
        return compiled.create_infer_request()

    def run(self, session: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        _check_inputs(session, inputs)
        session.infer(list(inputs))
        return [session.get_output_tensor(i).data.copy() for i in range(len(session.model_outputs))]

    def measure(self, session: Any, inputs: Sequence[np.ndarray], warmup: int = 10, repeats: int = 50) -> LatencyStats:
        _check_inputs(session, inputs)
        feed = list(inputs)
        return time_calls(lambda: session.infer(feed), warmup, repeats)

    def settings(self) -> dict[str, Any]:
        import openvino as ov

        return {
            **super().settings(),
            "precision": self.precision,
            "streams": 1,
            "hint": "LATENCY",
            "openvino": ov.__version__,
        }


def _check_inputs(session: Any, inputs: Sequence[np.ndarray]) -> None:
    """Refuse a wrong input count or shape with a line naming what the model expects."""
    expected = session.model_inputs
    if len(inputs) != len(expected):
        raise EdgepruneError(f"the model takes {len(expected)} input(s), {len(inputs)} were given")
    for spec, value in zip(expected, inputs):
        shape = spec.get_partial_shape()
        if shape.is_static and tuple(shape.to_shape()) != tuple(np.shape(value)):
            raise EdgepruneError(
                f"input {spec.get_any_name()!r}: the model expects shape {tuple(shape.to_shape())}, "
                f"got {tuple(np.shape(value))}; pass inputs of the shape the model was exported with"
            )
