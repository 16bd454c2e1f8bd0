"""ONNX Runtime on a CUDA GPU (``ort-cuda``): the CPU runtime's settings with the CUDA provider.

`onnxruntime-gpu` installs on hosts without a GPU and then silently runs on the CPU; this runtime
is available only when the CUDA provider is present *and* a GPU is visible, and every session is
checked to really run on the CUDA provider before its latency counts (ort_cpu.py). Timing is
host-side around `session.run`, which returns only after the outputs are copied back to the host.
"""

from __future__ import annotations

from edgeprune.runtime_bench.ort_cpu import OrtCpuRuntime
from edgeprune.runtime_bench.registry import register


@register
class OrtCudaRuntime(OrtCpuRuntime):
    name = "ort-cuda"
    provider = "CUDAExecutionProvider"
    cpu_bound = False  # the host thread waits for the GPU

    def available(self) -> tuple[bool, str]:
        ok, why = super().available()
        if not ok:
            return False, f"{why} (pip install onnxruntime-gpu on a CUDA host)"
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA device visible here; onnxruntime-gpu would fall back to the CPU"
        return True, ""
