"""ExecuTorch programs (``pte`` format) with the XNNPACK delegate: the mobile-class deployment file.

The pruned nn.Module goes through `torch.export`, `to_edge_transform_and_lower` with the XNNPACK
partitioner (every op XNNPACK supports runs in its delegate, the rest in ExecuTorch's portable
kernels) and `to_executorch()`; the program's bytes are the `.pte` an Android/iOS app loads.
ExecuTorch is an optional extra (`pip install 'edgeprune[mobile]'`, about 540 MB of dependencies),
imported only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from edgeprune import modelrun
from edgeprune.atomic import atomic_path
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.exporters.base import Artifact, Exporter
from edgeprune.exporters.registry import register
from edgeprune.runtime_bench.executorch_xnnpack import executorch_missing


@register
class ExecuTorchExporter(Exporter):
    format = "pte"
    suffix = "pte"

    def export(self, model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], out_path: Path) -> Artifact:
        missing = executorch_missing()
        if missing:
            raise EdgepruneError(missing)
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        with modelrun.eval_mode(model):
            try:
                exported = torch.export.export(model, tuple(example_inputs))
                program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
            except Exception as err:  # torch.export / lowering raise many types; all mean "cannot export"
                raise EdgepruneError(
                    f"cannot export {type(model).__name__} to ExecuTorch: {first_line(err)}; "
                    "the model needs to be torch.export-able (no data-dependent control flow)"
                ) from err
        with atomic_path(out_path) as tmp:
            tmp.write_bytes(program.buffer)
        return Artifact(Path(out_path), self.format, {"exporter": "torch.export + executorch", "delegate": "XNNPACK"})

    def verify(self, artifact: Artifact, model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> float:
        from edgeprune.runtime_bench.executorch_xnnpack import ExecuTorchRuntime

        rt = ExecuTorchRuntime()
        got = rt.run(rt.load(str(artifact.path)), [t.numpy() for t in inputs])
        want = modelrun.run(model, inputs)
        return max(float(abs(torch.from_numpy(g) - w.float()).max()) for g, w in zip(got, want))
