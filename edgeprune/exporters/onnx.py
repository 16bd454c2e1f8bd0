"""Export to ONNX (simplified with onnxsim) and check the file against PyTorch on ONNX Runtime.

The budget search exports every candidate it measures, so export speed matters: the legacy
TorchScript exporter takes ~0.05 s on a small CNN where the dynamo exporter takes ~3.3 s (~60x).
The TorchScript one is used first; the dynamo one only for a model the tracer cannot handle.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edgeprune.atomic import atomic_path
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.exporters.base import Artifact, Exporter
from edgeprune.exporters.registry import register
from edgeprune.modelrun import eval_mode, flatten_outputs
from edgeprune.runtime_bench.ort_cpu import OrtCpuRuntime

log = logging.getLogger(__name__)
#: protobuf serializes at most 2 GiB: a model with more weights cannot be one .onnx file
PROTOBUF_LIMIT = 2**31
#: the lowest opset the dynamo exporter writes natively; asked for less, it converts down with
#: onnx's C API, which leaves opset-18 attributes behind (Split's num_outputs: GPT-2's and timm
#: RoPE ViTs' files then fail to load in ONNX Runtime), so its files stay at 18 or above
DYNAMO_MIN_OPSET = 18


@register
class OnnxExporter(Exporter):
    """ONNX at a fixed opset; `atol`/`rtol` are what `check` accepts as "matches PyTorch". `io` names
    the inputs and outputs and their dynamic axes (input_names, output_names, dynamic_axes as
    torch.onnx.export takes them; a decoder step's cache length), else input0.. / output0.. fixed."""

    format = "onnx"
    suffix = "onnx"

    def __init__(
        self,
        opset: int = 17,
        simplify: bool = True,
        atol: float = 1e-3,
        rtol: float = 1e-3,
        io: dict[str, Any] | None = None,
    ) -> None:
        self.opset = opset
        self.io = io
        self.simplify = simplify
        self.atol = atol
        self.rtol = rtol

    def export(self, model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], out_path: Path) -> Artifact:
        """Write `model` to `out_path`, whole or not at all: on failure an earlier file stays as it was.

        The returned `Artifact.meta` says which exporter ran, the opset, and whether onnxsim's
        result was kept (`simplified`; when not, `simplify_note` says why).
        """
        inputs = tuple(example_inputs)
        out_path = Path(out_path)
        weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        if weights >= PROTOBUF_LIMIT:
            raise EdgepruneError(
                f"{type(model).__name__}'s weights take {weights / 2**30:.2f} GiB, over the 2 GiB a single-file "
                "ONNX model can hold (protobuf's limit); prune it with edgeprune.prune and export it yourself "
                "with external data, or measure it on a runtime that loads PyTorch (--runtime torch-cpu)"
            )
        with eval_mode(model):
            n_outputs = len(flatten_outputs(_forward(model, inputs)))
            with atomic_path(out_path) as tmp:
                exporter = self._torch_export(model, inputs, tmp, n_outputs)
                proto = onnx.load(str(tmp))
                note = "not requested"
                if self.simplify:
                    proto, note = _simplify(proto)
                onnx.save(proto, str(tmp))
        meta: dict[str, Any] = {"exporter": exporter, "opset": _opset(proto), "simplified": not note}
        if note:
            meta["simplify_note"] = note
        return Artifact(out_path, self.format, meta)

    def verify(self, artifact: Artifact, model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> float:
        """Max |ONNX Runtime - PyTorch| over every element of every output."""
        return self._compare(artifact, model, inputs)[0]

    def check(self, artifact: Artifact, model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> float:
        """`verify`, but a difference over atol + rtol * max|PyTorch output| raises `EdgepruneError`.

        A graph that computes something else has no meaningful latency, so this is an error, not
        a warning. Returns the difference when it is within tolerance.
        """
        diff, scale = self._compare(artifact, model, inputs)
        tol = self.atol + self.rtol * scale
        if not diff <= tol:  # `not <=` so a NaN difference fails too
            raise EdgepruneError(
                f"{artifact.path}: ONNX Runtime output differs from PyTorch by {diff:.3g} (max abs), over the "
                f"tolerance {tol:.3g} (atol {self.atol:g} + rtol {self.rtol:g} x max|output| {scale:.3g}); "
                "the exported graph is wrong: re-export it (try simplify=False or another opset)"
            )
        return diff

    def _torch_export(
        self, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, n_outputs: int
    ) -> str:
        """Export with TorchScript, falling back to dynamo once; returns the name of the one that worked."""
        common: dict[str, Any] = {
            "input_names": _names("input", len(inputs)),
            "output_names": _names("output", n_outputs),
            "opset_version": self.opset,
        } | (self.io or {})
        try:
            with warnings.catch_warnings():
                # The legacy exporter warns it is deprecated on every call; we chose it knowingly (speed).
                warnings.simplefilter("ignore", DeprecationWarning)
                # the tracer's notes on Python values it froze: what the file computes is checked
                # against PyTorch right after export, so a wrong trace fails there, not silently
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                # advanced indexing (a decoder's rotary cache) exported as Gather: its negative-index caveat
                # is checked the same way
                warnings.filterwarnings("ignore", message="Exporting aten::index operator")
                torch.onnx.export(model, inputs, str(path), dynamo=False, do_constant_folding=True, **common)
            return "torchscript"
        except Exception as ts_err:  # noqa: BLE001 - torch raises many unrelated types here; each means "could not export"
            try:
                torch.onnx.export(
                    model,
                    inputs,
                    str(path),
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                    **common | {"opset_version": max(self.opset, DYNAMO_MIN_OPSET)},
                )
                return "dynamo"
            except Exception as dyn_err:
                hint = "install onnxscript so the dynamo exporter can try, " if isinstance(dyn_err, ImportError) else ""
                raise EdgepruneError(
                    f"cannot export {type(model).__name__} to ONNX opset {self.opset}: {first_line(ts_err)} "
                    f"(dynamo exporter: {first_line(dyn_err)}); {hint}replace that layer/op with exportable "
                    "ones, or try another opset"
                ) from dyn_err

    def _compare(
        self, artifact: Artifact, model: torch.nn.Module, inputs: Sequence[torch.Tensor]
    ) -> tuple[float, float]:
        """(max |ONNX Runtime - PyTorch|, max |PyTorch output|) over all outputs.

        ONNX Runtime runs as `ort-cpu` does when timing (optimization ALL, 1 thread), so what is
        verified is the graph that gets measured, fusions included.
        """
        runtime = OrtCpuRuntime(threads=1)
        got = runtime.run(runtime.load(str(artifact.path)), [t.detach().cpu().numpy() for t in inputs])
        with eval_mode(model), torch.no_grad():
            want = [t.detach().cpu().numpy() for t in flatten_outputs(model(*inputs))]
        if len(got) != len(want):
            raise EdgepruneError(
                f"{artifact.path}: the ONNX graph has {len(got)} output(s), the model {len(want)}; "
                "re-export it from this model"
            )
        diff = scale = 0.0
        for i, (g, w) in enumerate(zip(got, want)):
            if g.shape != w.shape:
                raise EdgepruneError(
                    f"{artifact.path}: output {i} has shape {g.shape}, the model's has {w.shape}; "
                    "re-export it from this model"
                )
            diff = max(diff, _max_abs_diff(g, w))
            finite = np.abs(w[np.isfinite(w)].astype(np.float64))
            scale = max(scale, float(finite.max(initial=0.0)))
        return diff, scale


def onnx_initializer_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Initializer name -> shape, read without loading tensor data: shows a pruned layer got narrower."""
    return {t.name: tuple(t.dims) for t in _load_structure(path).graph.initializer}


def onnx_param_count(path: str | os.PathLike[str]) -> int:
    """Elements in all initializers (weights, plus the few shape constants a graph may keep).

    After export BatchNorm is folded into the convolutions, so this is less than the PyTorch
    parameter count; compare ONNX counts with ONNX counts.
    """
    return sum(math.prod(shape) for shape in onnx_initializer_shapes(path).values())


def _load_structure(path: str | os.PathLike[str]) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, OSError, ...: all mean the file is not usable ONNX
        raise EdgepruneError(f"{path}: cannot read it as ONNX ({first_line(e)}); check the path or re-export it") from e


def _simplify(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """onnxsim's graph if it succeeded and passed its own check, else the input and the reason.

    A failed simplification costs speed, not correctness, so it is recorded rather than raised.
    """
    import onnxsim  # imported here: its import takes ~2 s and only export needs it

    try:
        simplified, ok = onnxsim.simplify(proto)
    except Exception as e:  # noqa: BLE001 - onnxsim surfaces C++ failures as assorted exception types
        note = f"onnxsim failed: {first_line(e)}"
    else:
        if ok:
            return simplified, ""
        note = "onnxsim's check rejected its simplified graph"
    log.warning("keeping the unsimplified ONNX graph: %s", note)
    return proto, note


def _forward(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """One eager forward: its outputs name the ONNX outputs, and a broken model fails here, clearly."""
    try:
        with torch.no_grad():
            return model(*inputs)
    except Exception as e:
        raise EdgepruneError(
            f"{type(model).__name__} fails on the example inputs ({type(e).__name__}: {first_line(e)}); "
            f"check the input shapes {[tuple(t.shape) for t in inputs]} and the model's forward"
        ) from e


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}{i}" for i in range(n)]


def _opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    """Max |got - want|; equal infinities and NaN-vs-NaN count as agreeing, any other NaN as inf."""
    g, w = got.astype(np.float64), want.astype(np.float64)
    with np.errstate(invalid="ignore"):
        same = (g == w) | (np.isnan(g) & np.isnan(w))
        d = float(np.where(same, 0.0, np.abs(g - w)).max(initial=0.0))
    return math.inf if math.isnan(d) else d
