"""int8 post-training quantization of exported ONNX files, one backend per file; `quantizer_for(runtime)`.

Each backend registers itself on import, so adding one means one file and one line here.
"""

from edgeprune.quantize import nncf_ptq, ort_static  # noqa: F401  (registration)
from edgeprune.quantize.base import Feed, Quantizer, int8_dot_product, int8_runtimes, quantizer_for

__all__ = ["Feed", "Quantizer", "int8_dot_product", "int8_runtimes", "quantizer_for"]
