"""Runtime names (``ort-cpu``, ...) mapped to `Runtime` classes; callers go through `get_runtime`."""

from __future__ import annotations

from typing import Any

from edgeprune.errors import EdgepruneError
from edgeprune.registry import Registry
from edgeprune.runtime_bench.base import Runtime

RUNTIMES: Registry[Runtime] = Registry("runtime")
register = RUNTIMES.register
runtime_names = RUNTIMES.names


def get_runtime(name: str, threads: int = 1, **options: Any) -> Runtime:
    """`name` is a registry name, optionally with the runtime's one setting after a colon:
    ``openvino-cpu:bf16``, ``ort-mobile:amd64``, ``remote:10.0.0.7:8765/ort-cpu``."""
    base, sep, spec = name.partition(":")
    if sep:
        option = RUNTIMES.get(base).spec_option
        if option is None:
            raise EdgepruneError(f"runtime {base} takes no ':' setting; use plain --runtime {base}")
        options[option] = spec
    return RUNTIMES.create(base, threads=threads, **options)


def onnx_runtimes() -> list[str]:
    """The runtimes that run an ONNX file on this host (what `--runtime all` and the agent offer);
    not `remote` (another host) and not the eager-PyTorch ones (they load a pickled module, which
    an agent must never accept from a client)."""
    return [n for n in runtime_names() if RUNTIMES.get(n).artifact_format == "onnx" and RUNTIMES.get(n).on_host]
