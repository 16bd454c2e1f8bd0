"""The pruned nn.Module itself (``torch`` format, ``.pt``), for runtimes that execute PyTorch eagerly.

`torch.save` of the whole module: the pruned architecture is not the original class's default
shape, so a state dict alone could not be loaded without the plan. Loading it needs the model's
classes importable, as any pickled module does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from edgeprune import modelrun
from edgeprune.atomic import atomic_path
from edgeprune.exporters.base import Artifact, Exporter
from edgeprune.exporters.registry import register


@register
class TorchModuleExporter(Exporter):
    format = "torch"
    suffix = "pt"

    def export(self, model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], out_path: Path) -> Artifact:
        with atomic_path(out_path) as tmp:
            torch.save(modelrun.picklable(model), tmp)
        return Artifact(Path(out_path), self.format, {"exporter": "torch.save", "torch": torch.__version__})

    def verify(self, artifact: Artifact, model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> float:
        """Max |reloaded - original| (0 unless pickling lost state, e.g. a buffer not registered)."""
        loaded = torch.load(artifact.path, map_location="cpu", weights_only=False)
        got, want = modelrun.run(loaded, inputs), modelrun.run(model, inputs)
        return max(float((g.float() - w.float()).abs().max()) for g, w in zip(got, want))
