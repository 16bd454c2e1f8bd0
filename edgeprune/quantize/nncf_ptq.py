"""NNCF post-training quantization for ``openvino-cpu``, on the ONNX graph itself.

NNCF's ONNX backend inserts QuantizeLinear/DequantizeLinear pairs where OpenVINO's CPU plugin
runs int8 kernels (its CPU preset: symmetric int8 weights per channel, int8/uint8 activations,
fast bias correction), with ranges collected on the calibration images. The result stays an ONNX
file, so `compress bench` and `check` time it like any other. NNCF is part of the `cpu-runtimes`
extra; without it int8 on openvino-cpu is refused with that reason. OpenVINO must report INT8
among the CPU's optimization capabilities, else int8 would run emulated.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeprune.atomic import atomic_path
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.quantize.base import Feed, Quantizer, int8_dot_product, register


@register
class NncfQuantizer(Quantizer):
    name = "nncf"
    runtimes = ("openvino-cpu",)
    reference = "nncf.quantize (post-training quantization, ONNX backend, target device CPU)"

    def available(self) -> tuple[bool, str]:
        try:
            import nncf  # noqa: F401
            import openvino as ov
        except ImportError as e:
            return False, f"NNCF or OpenVINO is not importable ({first_line(e)}); pip install 'edgeprune[cpu-runtimes]'"
        if "INT8" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return False, "OpenVINO reports no INT8 capability on this CPU (int8 would be emulated, slower than f32)"
        return True, ""

    def quantize(self, source: Path, calibration: Sequence[Feed], out: Path) -> dict[str, Any]:
        import nncf
        import onnx

        nncf.set_log_level(logging.ERROR)
        model = onnx.load(str(source))
        names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        dataset = nncf.Dataset([dict(zip(names, feed)) for feed in calibration])
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # NNCF draws progress bars on stdout
                quantized = nncf.quantize(
                    model, dataset, subset_size=len(calibration), target_device=nncf.TargetDevice.CPU
                )
        except Exception as e:  # NNCF raises assorted types for graphs it cannot quantize
            raise EdgepruneError(
                f"{source}: NNCF could not quantize it to int8 ({first_line(e)}); use --precision fp32"
            ) from e
        with atomic_path(out) as dest:
            onnx.save(quantized, str(dest))
        return self.settings()

    def settings(self) -> dict[str, Any]:
        import nncf

        return super().settings() | {
            "format": "QDQ (ONNX)",
            "preset": "performance (CPU)",
            "nncf": nncf.__version__,
            "int8_dot_product": int8_dot_product() or "none reported",
        }
