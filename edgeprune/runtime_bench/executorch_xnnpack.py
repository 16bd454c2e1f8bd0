"""ExecuTorch with the XNNPACK delegate (``executorch-xnnpack``): the mobile-class runtime.

Runs the `.pte` program (exporters/executorch.py) through ExecuTorch's Python runtime, the same
C++ runtime and XNNPACK kernels an Android or iOS app links, here on the host CPU: the latency of
the deployable program on this machine, not of a phone. Optional extra: `pip install
'edgeprune[mobile]'`; without it the runtime is unavailable with that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.runtime_bench.base import LatencyStats, Runtime, time_calls
from edgeprune.runtime_bench.registry import register

if TYPE_CHECKING:  # torch is imported where it is used: the ONNX runtimes, and so the agent, work without it
    import torch


def executorch_missing() -> str | None:
    """Why ExecuTorch cannot be used here, or None when it can."""
    try:
        import executorch.exir  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except ImportError as err:
        return f"executorch is not importable ({first_line(err)}); pip install 'edgeprune[mobile]'"
    return None


@register
class ExecuTorchRuntime(Runtime):
    name = "executorch-xnnpack"
    artifact_format = "pte"

    def available(self) -> tuple[bool, str]:
        missing = executorch_missing()
        return (False, missing) if missing else (True, "")

    def load(self, artifact_path: str) -> Any:
        path = self.checked_path(artifact_path)
        from executorch.runtime import Runtime as EtRuntime

        _set_threads(self.threads)
        try:
            return EtRuntime.get().load_program(str(path)).load_method("forward")
        except Exception as err:  # the runtime raises RuntimeError/ValueError for any bad program
            raise EdgepruneError(f"{path}: ExecuTorch cannot load it ({first_line(err)}); re-export the model") from err

    def _tensors(self, inputs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        import torch

        return [torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]

    def run(self, session: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        try:
            outs = session.execute(self._tensors(inputs))
        except Exception as err:  # noqa: BLE001
            raise EdgepruneError(
                f"ExecuTorch could not run the program on inputs of shape "
                f"{[tuple(np.shape(x)) for x in inputs]}: {first_line(err)}"
            ) from None
        return [o.float().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in outs]

    def measure(self, session: Any, inputs: Sequence[np.ndarray], warmup: int = 10, repeats: int = 50) -> LatencyStats:
        xs = self._tensors(inputs)
        return time_calls(lambda: session.execute(xs), warmup, repeats)

    def settings(self) -> dict[str, Any]:
        import importlib.metadata

        return {**super().settings(), "delegate": "XNNPACK", "executorch": importlib.metadata.version("executorch")}


def _set_threads(threads: int) -> None:
    """Size ExecuTorch's thread pool (XNNPACK's workers) to `threads`."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)  # the only Python hook ExecuTorch exposes for it
