"""Run exported models and measure their latency; `get_runtime(name)` is the way in.

Each runtime module registers itself on import, so adding one means one file and one line here.
"""
from edgeprune.runtime_bench import ort_cpu  # noqa: F401  (registers "ort-cpu")
from edgeprune.runtime_bench.base import LatencyStats, Runtime
from edgeprune.runtime_bench.registry import get_runtime, runtime_names

__all__ = ["LatencyStats", "Runtime", "get_runtime", "runtime_names"]
