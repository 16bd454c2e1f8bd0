"""Eager PyTorch on the CPU (``torch-cpu``): the pruned nn.Module itself, no export in between.

The reference every other runtime is compared with, and what a Python service that serves the
module directly gets. Runs under `torch.inference_mode()` with `threads` intra-op threads (set for
the process while a measurement runs, then restored).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.runtime_bench.base import LatencyStats, Runtime, time_calls
from edgeprune.runtime_bench.registry import register

if TYPE_CHECKING:  # torch is imported where it is used: the ONNX runtimes, and so the agent, work without it
    import torch


@register
class TorchCpuRuntime(Runtime):
    name = "torch-cpu"
    artifact_format = "torch"
    device = "cpu"
    cpu_bound = True

    def available(self) -> tuple[bool, str]:
        return True, ""

    def load(self, artifact_path: str) -> Any:
        import torch

        path = self.checked_path(artifact_path)
        try:
            model = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # pickle/zip/IO errors all mean "not a saved module"
            raise EdgepruneError(
                f"{path}: cannot load the saved module ({first_line(e)}); save it with torch.save(model)"
            ) from e
        if not isinstance(model, torch.nn.Module):
            raise EdgepruneError(f"{path} holds a {type(model).__name__}, not an nn.Module")
        return model.to(self.device).eval()

    def _tensors(self, inputs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        import torch

        return [torch.from_numpy(np.ascontiguousarray(x)).to(self.device) for x in inputs]

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def run(self, session: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        from edgeprune.modelrun import flatten_outputs

        with self._threads(), torch.inference_mode():
            try:
                out = session(*self._tensors(inputs))
            except RuntimeError as e:
                raise EdgepruneError(
                    f"the model does not run on inputs of shape {[tuple(x.shape) for x in inputs]}: {first_line(e)}"
                ) from None
            return [t.float().cpu().numpy() for t in flatten_outputs(out)]

    def measure(self, session: Any, inputs: Sequence[np.ndarray], warmup: int = 10, repeats: int = 50) -> LatencyStats:
        import torch

        xs = self._tensors(inputs)
        with self._threads(), torch.inference_mode():
            return time_calls(lambda: session(*xs), warmup, repeats)

    def settings(self) -> dict[str, Any]:
        import torch

        return {
            **super().settings(),
            "device": self.device,
            "mode": "eager, inference_mode",
            "torch": torch.__version__,
        }
