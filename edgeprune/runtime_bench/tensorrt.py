"""TensorRT (``tensorrt[:fp32|fp16]``): a serialized engine (exporters/tensorrt.py) on the GPU.

I/O buffers are CUDA tensors allocated once per session; a run copies the inputs in, enqueues the
engine on the current stream and synchronizes. Timing uses CUDA events around the enqueue, like
``torch-cuda``. FP16 engines are checked against PyTorch at a looser tolerance (1e-2 relative).
Unavailable, with the reason, where TensorRT or a GPU is missing: that is every machine this
project has been run on so far, so this runtime has not been run yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.runtime_bench.base import LatencyStats, Runtime
from edgeprune.runtime_bench.registry import register

if TYPE_CHECKING:  # torch is imported where it is used: the ONNX runtimes, and so the agent, work without it
    import torch

PRECISIONS = ("fp32", "fp16")


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot be used here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as err:
        return f"tensorrt is not importable ({first_line(err)}); install TensorRT's Python package on the GPU host"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device here; TensorRT engines are built and run on the GPU that will serve them"
    return None


class _Session:
    def __init__(self, engine: Any, context: Any, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        self.engine, self.context, self.inputs, self.outputs = engine, context, inputs, outputs

    def enqueue(self) -> None:
        import torch

        self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)


@register
class TensorRtRuntime(Runtime):
    name = "tensorrt"
    artifact_format = "engine"
    spec_option = "precision"

    def __init__(self, threads: int = 1, precision: str = "fp32") -> None:
        super().__init__(threads)
        if precision not in PRECISIONS:
            raise EdgepruneError(f"tensorrt precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.precision = precision
        self.rtol = 1e-3 if precision == "fp32" else 1e-2

    def exporter_options(self) -> dict[str, Any]:
        return {"fp16": self.precision == "fp16"}

    @property
    def reduced_precision(self) -> bool:
        return self.precision == "fp16"

    def available(self) -> tuple[bool, str]:
        missing = tensorrt_missing()
        return (False, missing) if missing else (True, "")

    def load(self, artifact_path: str) -> Any:
        path = self.checked_path(artifact_path)
        import tensorrt as trt
        import torch

        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EdgepruneError(
                f"{path}: TensorRT cannot deserialize it (built for another GPU or TensorRT version?); rebuild it here"
            )
        context = engine.create_execution_context()
        inputs: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = torch.from_numpy(np.zeros(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buf = torch.empty(tuple(engine.get_tensor_shape(name)), dtype=dtype, device="cuda")
            context.set_tensor_address(name, buf.data_ptr())
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(buf)
        return _Session(engine, context, inputs, outputs)

    def _feed(self, session: _Session, inputs: Sequence[np.ndarray]) -> None:
        import torch

        if len(inputs) != len(session.inputs):
            raise EdgepruneError(f"the engine takes {len(session.inputs)} input(s), {len(inputs)} were given")
        for buf, x in zip(session.inputs, inputs):
            if tuple(buf.shape) != tuple(np.shape(x)):
                raise EdgepruneError(f"the engine expects input shape {tuple(buf.shape)}, got {tuple(np.shape(x))}")
            buf.copy_(torch.from_numpy(np.ascontiguousarray(x)))

    def run(self, session: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        self._feed(session, inputs)
        try:
            session.enqueue()
            torch.cuda.synchronize()
        except Exception as err:  # noqa: BLE001
            raise EdgepruneError(f"TensorRT failed to run the engine: {first_line(err)}") from None
        return [o.float().cpu().numpy() for o in session.outputs]

    def measure(self, session: Any, inputs: Sequence[np.ndarray], warmup: int = 10, repeats: int = 50) -> LatencyStats:
        import torch

        self._feed(session, inputs)
        for _ in range(warmup):
            session.enqueue()
        torch.cuda.synchronize()
        runs = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            session.enqueue()
            end.record()
            end.synchronize()
            runs.append(start.elapsed_time(end))
        return LatencyStats.from_runs(runs, warmup)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "precision": self.precision, "timing": "CUDA events, synchronized per run"}
