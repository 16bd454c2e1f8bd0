"""ONNX Runtime Mobile's ``.ort`` format (``ort-mobile``): the graph a phone app would ship.

The verified ONNX is converted with onnxruntime's own converter (`python -m
onnxruntime.tools.convert_onnx_models_to_ort`, "Fixed" optimization style, ARM target platform by
default, so no x86-only layout optimizations are baked in) and the ``.ort`` file is loaded the way
the mobile runtime loads it: ORT model format, bytes used in place, `threads` intra-op threads,
sequential execution. Measured here (ResNet-18-like / MobileNetV2-like at 224x224, 1 thread) it runs
1.5-2.5x slower than ``ort-cpu`` on the same host: the latency of the portable graph, not of a phone.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.runtime_bench.ort_cpu import OrtCpuRuntime
from edgeprune.runtime_bench.registry import register

PLATFORMS = ("arm", "amd64")


@register
class OrtMobileRuntime(OrtCpuRuntime):
    name = "ort-mobile"
    artifact_format = "onnx"  # converted to .ort on load
    spec_option = "target_platform"

    def __init__(self, threads: int = 1, target_platform: str = "arm") -> None:
        super().__init__(threads)
        if target_platform not in PLATFORMS:
            raise EdgepruneError(f"ort-mobile target platform {target_platform!r}: use one of {', '.join(PLATFORMS)}")
        self.target_platform = target_platform

    def available(self) -> tuple[bool, str]:
        ok, why = super().available()
        if (
            ok and importlib.util.find_spec("onnx") is None
        ):  # onnxruntime's converter imports it (the agent image lacks it)
            return False, "the .ort conversion (onnxruntime's converter) needs the onnx package; pip install onnx"
        return ok, why

    def convert(self, onnx_path: Path) -> Path:
        """`onnx_path` as an ORT-format model next to it (converted in a temporary folder beside it, then renamed)."""
        out = onnx_path.with_suffix(".ort")
        with tempfile.TemporaryDirectory(dir=onnx_path.parent) as tmp:
            src = Path(tmp) / "model.onnx"
            shutil.copyfile(onnx_path, src)  # the converter names its output after the real file
            cmd = [
                sys.executable,
                "-m",
                "onnxruntime.tools.convert_onnx_models_to_ort",
                str(src),
                "--output_dir",
                tmp,
                "--optimization_style",
                "Fixed",
                "--target_platform",
                self.target_platform,
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            converted = Path(tmp) / "model.ort"
            if done.returncode != 0 or not converted.is_file():
                reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise EdgepruneError(
                    f"{onnx_path}: conversion to the .ort format failed ({first_line(reason)}); "
                    "the model may use an operator ORT Mobile lacks"
                )
            converted.replace(out)  # same folder, so the rename is atomic
        return out

    def load(self, artifact_path: str) -> Any:
        path = self.checked_path(artifact_path)
        import onnxruntime as ort

        ort_path = path if path.suffix == ".ort" else self.convert(path)
        opts = self.session_options()
        opts.add_session_config_entry("session.load_model_format", "ORT")
        opts.add_session_config_entry("session.use_ort_model_bytes_directly", "1")
        # the optimizations were baked in by the converter; a minimal mobile build applies no more
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(ort_path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # any load failure means an unusable .ort file
            raise EdgepruneError(f"{ort_path}: onnxruntime cannot load the .ort model ({first_line(e)})") from e

    def settings(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "runtime": self.name,
            "threads": self.threads,
            "format": "ORT (flatbuffer)",
            "optimization_style": "Fixed",
            "load_time_optimization": "none",
            "target_platform": self.target_platform,
            "inter_op_threads": 1,
            "execution_mode": "sequential",
            "onnxruntime": ort.__version__,
        }
