"""ONNX Runtime on the CPU (``ort-cpu``), configured as ../shared/BENCHMARKING.md asks.

Graph optimization is ORT_ENABLE_ALL: on these machines it is 1.4-2.4x faster than BASIC, so
timing with less would misstate what a deployment gets. One inter-op thread and sequential
execution keep timings stable on the shared 2-core hosts; intra-op threads come from `threads`.
onnxruntime is imported lazily so a missing install shows up in `available()`, not at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.runtime_bench.base import LatencyStats, Runtime, time_calls
from edgeprune.runtime_bench.registry import register

_PROVIDER = "CPUExecutionProvider"

# ONNX tensor type strings as onnxruntime reports them, for checking inputs before running.
_NUMPY_DTYPES: dict[str, np.dtype] = {
    f"tensor({onnx_name})": np.dtype(np_name)
    for onnx_name, np_name in [
        ("float", "float32"),
        ("double", "float64"),
        ("float16", "float16"),
        ("int64", "int64"),
        ("int32", "int32"),
        ("int16", "int16"),
        ("int8", "int8"),
        ("uint8", "uint8"),
        ("bool", "bool"),
    ]
}


@register
class OrtCpuRuntime(Runtime):
    name = "ort-cpu"
    artifact_format = "onnx"
    provider = _PROVIDER
    cpu_bound = True  # one intra-op thread computes on the calling thread

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError as e:
            return False, f"onnxruntime is not importable ({first_line(e)}); pip install onnxruntime"
        if self.provider not in ort.get_available_providers():
            return False, f"this onnxruntime build has no {self.provider}; install the onnxruntime wheel that has it"
        return True, ""

    def load(self, artifact_path: str) -> Any:
        path = self.checked_path(artifact_path)
        import onnxruntime as ort

        opts = self.session_options()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=[self.provider])
        except Exception as e:  # onnxruntime raises a different class per defect; all mean "bad file"
            raise EdgepruneError(
                f"{path}: onnxruntime cannot load it as an ONNX model ({first_line(e)}); "
                "re-export it, the file may be truncated or not ONNX"
            ) from e
        if session.get_providers()[0] != self.provider:  # onnxruntime-gpu falls back to the CPU silently
            raise EdgepruneError(
                f"onnxruntime ran {path.name} on {session.get_providers()[0]}, not {self.provider}; "
                "its latency would not be the target's"
            )
        return session

    def session_options(self) -> Any:
        """`threads` intra-op threads, one inter-op thread, sequential execution, errors-only logging
        (the search loads many candidates: warnings would flood the log)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        return opts

    def run(self, session: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, _feed(session, inputs))

    def measure(self, session: Any, inputs: Sequence[np.ndarray], warmup: int = 10, repeats: int = 50) -> LatencyStats:
        """Check the inputs once, then time the bare `session.run`, so the loop times only the model."""
        feed = _feed(session, inputs)
        return time_calls(lambda: session.run(None, feed), warmup, repeats)

    def settings(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            **super().settings(),
            "provider": self.provider,
            "graph_optimization": "ALL",  # 1.4-2.4x faster than BASIC on these machines
            "inter_op_threads": 1,
            "execution_mode": "sequential",
            "onnxruntime": ort.__version__,
        }


def _feed(session: Any, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Map `inputs` to the session's input names in order, refusing a wrong count, shape or dtype.

    onnxruntime's own messages for these cases are multi-line C++ errors; ours name what was expected.
    """
    expected = session.get_inputs()
    if len(inputs) != len(expected):
        raise EdgepruneError(
            f"the model takes {len(expected)} input(s) ({', '.join(i.name for i in expected)}), "
            f"{len(inputs)} were given"
        )
    feed = {}
    for spec, value in zip(expected, inputs):
        value = np.asarray(value)
        want_shape = tuple(spec.shape)
        shape_ok = len(want_shape) == value.ndim and all(
            not isinstance(w, int) or w == g
            for w, g in zip(want_shape, value.shape)  # str/None: dynamic dim
        )
        if not shape_ok:
            raise EdgepruneError(
                f"input {spec.name!r}: the model expects shape {want_shape}, got {tuple(value.shape)}; "
                "pass inputs of the shape the model was exported with"
            )
        want_dtype = _NUMPY_DTYPES.get(spec.type)
        if want_dtype is not None and value.dtype != want_dtype:
            raise EdgepruneError(f"input {spec.name!r}: the model expects {want_dtype}, got {value.dtype}")
        feed[spec.name] = value
    return feed
