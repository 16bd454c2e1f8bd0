"""Eager PyTorch on a CUDA GPU (``torch-cuda``), timed with CUDA events.

A GPU runs asynchronously: host timers around a call measure the launch, not the work. Each timed
run is bracketed by CUDA events on the current stream and synchronized, so the figure is the GPU's
own elapsed time for the forward pass (the protocol BENCHMARKING.md asks for on GPUs). Without a
CUDA device it is unavailable, with that reason, and the pipeline stops before measuring anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeprune.runtime_bench.base import LatencyStats
from edgeprune.runtime_bench.registry import register
from edgeprune.runtime_bench.torch_cpu import TorchCpuRuntime


@register
class TorchCudaRuntime(TorchCpuRuntime):
    name = "torch-cuda"
    device = "cuda"
    cpu_bound = False  # the host thread waits for the GPU

    def available(self) -> tuple[bool, str]:
        import torch

        if not torch.cuda.is_available():
            build = (
                "a CPU-only PyTorch build"
                if torch.version.cuda is None
                else f"PyTorch for CUDA {torch.version.cuda}, but no visible GPU"
            )
            return False, f"no CUDA device here ({build}); run on a GPU host or use --runtime ort-cpu"
        return True, ""

    def measure(self, session: Any, inputs: Sequence[np.ndarray], warmup: int = 10, repeats: int = 50) -> LatencyStats:
        import torch

        xs = self._tensors(inputs)
        runs = []
        with torch.inference_mode():
            for _ in range(warmup):
                session(*xs)
            torch.cuda.synchronize()
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                session(*xs)
                end.record()
                end.synchronize()
                runs.append(start.elapsed_time(end))  # milliseconds
        return LatencyStats.from_runs(runs, warmup)

    def settings(self) -> dict[str, Any]:
        import torch

        base = super().settings()
        if torch.cuda.is_available():
            base["gpu"] = torch.cuda.get_device_name()
        return base | {"timing": "CUDA events, synchronized per run"}
