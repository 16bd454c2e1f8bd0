"""ONNX Runtime static quantization (``ort-cpu``, ``ort-mobile``): QDQ format, per-channel int8
weights, uint8 activations with MinMax ranges from the calibration images.

`quant_pre_process` runs first (symbolic shape inference and ORT's graph optimizations, as ONNX
Runtime's documentation asks before quantizing), so Conv+BN+ReLU chains are fused before ranges
are collected. QDQ keeps the file a standard ONNX graph that every ORT build (and the ``.ort``
converter) fuses into int8 kernels. Measured on a CPU with AVX-512 VNNI (1 thread): the trained
CIFAR ResNet-20 ran at 0.45x its float32 latency on ort-cpu, 0.25x on ort-mobile (ARM graph).

The graph's tail, every node after the last weighted layer on its way to an output (a detector's
box decoding, sigmoids and the concatenation of boxes with class scores; a classifier's softmax),
stays in float32 (`float_tail`): a tensor that joins boxes in pixels (0-256) and probabilities
(0-1) under one uint8 scale has a step of one pixel, so every class score reads 0 or 1 (a YOLOv8n
quantized whole lost every detection: mAP50-95 0.863 -> 0.000). The tail is elementwise work that
costs little; the weighted layers, where the time goes, stay int8.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edgeprune.atomic import atomic_path
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.quantize.base import Feed, Quantizer, int8_dot_product, is_x86, register


@register
class OrtStaticQuantizer(Quantizer):
    name = "ort-static"
    runtimes = ("ort-cpu", "ort-mobile")
    reference = "onnxruntime.quantization.quantize_static (QDQ, per-channel), after quant_pre_process"

    def __init__(self) -> None:
        # x86 without VNNI: 7-bit weights, so ORT's u8 x s8 kernels cannot saturate (its documentation)
        self.dot_product = int8_dot_product()
        self.reduce_range = is_x86() and self.dot_product is None

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime.quantization  # noqa: F401
        except ImportError as e:
            return False, f"onnxruntime.quantization is not importable ({first_line(e)}); pip install onnxruntime"
        return True, ""

    def quantize(self, source: Path, calibration: Sequence[Feed], out: Path) -> dict[str, Any]:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class Reader(CalibrationDataReader):  # ORT pulls the calibration batches one at a time
            def __init__(self, names: list[str]) -> None:
                self.batches: Iterator[Feed] = iter(calibration)
                self.names = names

            def get_next(self) -> dict[str, Any] | None:
                feed = next(self.batches, None)
                return None if feed is None else dict(zip(self.names, feed))

        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            pre = Path(tmp) / "pre.onnx"
            note = ""
            try:
                quant_pre_process(str(source), str(pre))
            except Exception as e:  # noqa: BLE001 - shape inference fails on some graphs; the raw graph still quantizes
                note = f"quant_pre_process failed ({first_line(e)}); quantized the exported graph as it is"
                pre = source
            names = _input_names(pre)
            pre, tail = _named_with_tail(pre, Path(tmp) / "named.onnx")
            quiet = logging.getLogger().level
            logging.getLogger().setLevel(max(quiet, logging.ERROR))  # ORT's quantizer logs every op it skips
            try:
                with atomic_path(out) as dest:
                    quantize_static(
                        str(pre),
                        str(dest),
                        Reader(names),
                        quant_format=QuantFormat.QDQ,
                        per_channel=True,
                        reduce_range=self.reduce_range,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=tail,
                    )
            except Exception as e:  # ORT raises assorted types for graphs it cannot quantize
                raise EdgepruneError(
                    f"{source}: ONNX Runtime could not quantize it to int8 ({first_line(e)}); use --precision fp32"
                ) from e
            finally:
                logging.getLogger().setLevel(quiet)
        return self.settings() | {
            "pre_process": note or "quant_pre_process",
            "float_tail": f"{len(tail)} node(s) after the last weighted layer kept in float32",
        }

    def settings(self) -> dict[str, Any]:
        return super().settings() | {
            "format": "QDQ",
            "weights": "int8, symmetric, per channel",
            "activations": "uint8, asymmetric, per tensor",
            "calibration": "MinMax",
            "reduce_range": self.reduce_range,
            "int8_dot_product": self.dot_product or ("none (x86 without VNNI)" if is_x86() else "not x86"),
        }


#: the operators whose weights make a layer: where int8 saves time
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "ConvInteger"})


def float_tail(graph: Any) -> list[str]:
    """The names of the nodes from which no weighted layer (`WEIGHTED`) can be reached: what runs
    after the last weighted layer on every path to the outputs."""
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    feeds_weights: dict[int, bool] = {}

    def reaches(i: int) -> bool:
        stack, order = [i], []
        while stack:  # iterative: deep graphs exceed Python's recursion limit
            j = stack.pop()
            if j in feeds_weights or j in order:
                continue
            order.append(j)
            stack.extend(k for out in graph.node[j].output for k in consumers.get(out, []))
        for j in reversed(order):
            below = [k for out in graph.node[j].output for k in consumers.get(out, [])]
            feeds_weights[j] = any(graph.node[k].op_type in WEIGHTED or feeds_weights.get(k, False) for k in below)
        return feeds_weights[i]

    return [n.name for i, n in enumerate(graph.node) if n.op_type not in WEIGHTED and not reaches(i)]


def _named_with_tail(path: Path, out: Path) -> tuple[Path, list[str]]:
    """`path` with a name on every node (ORT's `nodes_to_exclude` matches names; optimised graphs
    leave some empty), written to `out` when any was missing, and the graph's `float_tail`."""
    import onnx

    model = onnx.load(str(path))
    unnamed = [n for n in model.graph.node if not n.name]
    for i, node in enumerate(unnamed):
        node.name = f"edgeprune_node_{i}"
    if unnamed:
        onnx.save(model, str(out))
        path = out
    return path, float_tail(model.graph)


def _input_names(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]
