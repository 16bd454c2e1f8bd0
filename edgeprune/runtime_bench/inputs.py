"""Random example inputs for an exported model, from the shapes its ONNX graph declares.

`compress bench` and `compress check` time a model file on its own, without the PyTorch module, so
inputs come from the graph; a dynamic dimension needs `--input-shape`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from edgeprune.errors import EdgepruneError, first_line

_DTYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.UINT8: np.uint8,
}


def example_inputs_for(path: str | Path, input_shape: Sequence[int] | None = None, seed: int = 0) -> list[np.ndarray]:
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:  # noqa: BLE001 - protobuf/IO errors all mean "not a readable ONNX file"
        raise EdgepruneError(f"cannot read ONNX model {path}: {first_line(err)}; pass a .onnx file") from None
    initializers = {i.name for i in graph.initializer}
    specs = [i for i in graph.input if i.name not in initializers]
    rng = np.random.default_rng(seed)
    arrays = []
    for k, spec in enumerate(specs):
        t = spec.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if input_shape is not None and k == 0:
            dims = list(input_shape)
        if any(d is None or d <= 0 for d in dims):
            raise EdgepruneError(
                f"input {spec.name!r} of {path} has dynamic shape {dims}; pass --input-shape, e.g. 1x3x224x224"
            )
        dtype = _DTYPES.get(t.elem_type)
        if dtype is None:
            raise EdgepruneError(f"input {spec.name!r} of {path} has an unsupported element type {t.elem_type}")
        shape = [d for d in dims if d is not None]  # all of them (checked above)
        arrays.append(
            rng.standard_normal(shape).astype(dtype)
            if np.issubdtype(dtype, np.floating)
            else rng.integers(0, 2, size=shape).astype(dtype)
        )
    return arrays
