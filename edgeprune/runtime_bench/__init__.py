"""Run exported models and measure their latency; `get_runtime(name)` is the way in.

Each runtime module registers itself on import, so adding one means one file and one line here.
"""

from edgeprune.runtime_bench import (  # noqa: F401  (registration)
    executorch_xnnpack,
    openvino_cpu,
    ort_cpu,
    ort_cuda,
    ort_genai,
    ort_mobile,
    remote,
    tensorrt,
    torch_cpu,
    torch_cuda,
)
from edgeprune.runtime_bench.base import LatencyStats, Runtime
from edgeprune.runtime_bench.registry import get_runtime, runtime_names

__all__ = ["LatencyStats", "Runtime", "get_runtime", "runtime_names"]
