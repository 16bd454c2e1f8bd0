"""Runtime names (``ort-cpu``, ...) mapped to `Runtime` classes; callers go through `get_runtime`."""
from __future__ import annotations

from typing import Any

from edgeprune.registry import Registry
from edgeprune.runtime_bench.base import Runtime

RUNTIMES: Registry[Runtime] = Registry("runtime")
register = RUNTIMES.register
runtime_names = RUNTIMES.names


def get_runtime(name: str, threads: int = 1, **options: Any) -> Runtime:
    return RUNTIMES.create(name, threads=threads, **options)
