"""The `Quantizer` interface: turn a verified float32 ONNX file into an int8 one for one runtime.

Each backend is one file in this package that registers itself (`@register`) and names the
runtimes whose int8 it makes (`runtimes`); `quantizer_for(runtime)` finds it. A runtime no backend
names gets one line, "int8 not available on RUNTIME", instead of a file it cannot run well. The
backends call the field's own post-training quantizers (ONNX Runtime's, NNCF): edgeprune chooses
their settings and checks their output, it does not quantize by hand.
"""

from __future__ import annotations

import abc
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune import environment
from edgeprune.errors import EdgepruneError
from edgeprune.registry import Registry

#: one calibration batch: the model's inputs, in order, each with the export's batch size
Feed = Sequence[np.ndarray]

#: the CPU flags of int8 dot-product instructions (x86: AVX-512 VNNI, AVX-VNNI, AMX-INT8)
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_dot_product() -> str | None:
    """The int8 dot-product flag this CPU reports, or None (x86 without VNNI, or flags unreadable).

    It matters on x86: without VNNI, ONNX Runtime multiplies uint8 x int8 with VPMADDUBSW, whose
    16-bit intermediate sums can saturate, so weights must be quantized to 7 bits there."""
    flags = environment.cpu_flags()
    return next((f for f in INT8_DOT_FLAGS if f in flags), None)


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


class Quantizer(abc.ABC):
    """Post-training static int8 quantization of an ONNX file, calibrated on real inputs."""

    #: registry name, e.g. "ort-static"
    name: str = ""
    #: the runtimes (registry names) that run what it makes
    runtimes: tuple[str, ...] = ()
    #: the library and method, for reports
    reference: str = ""

    @abc.abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, "") when it can quantize here, else (False, a reason a user can act on)."""

    @abc.abstractmethod
    def quantize(self, source: Path, calibration: Sequence[Feed], out: Path) -> dict[str, Any]:
        """Write the int8 model of `source` to `out` (whole or not at all), its activation ranges
        taken from running `calibration`; returns what the report should say about how."""

    def settings(self) -> dict[str, Any]:
        """How it quantizes (format, granularity, types), for the report and the run's config."""
        return {"quantizer": self.name, "reference": self.reference}


QUANTIZERS: Registry[Quantizer] = Registry("int8 quantizer")
register = QUANTIZERS.register


def int8_runtimes() -> list[str]:
    """Every runtime some backend makes int8 models for."""
    return sorted({r for name in QUANTIZERS.names() for r in QUANTIZERS.get(name).runtimes})


def quantizer_for(runtime_name: str) -> Quantizer:
    """The backend for `runtime_name` (its registry name, without a ':' setting), ready to use;
    a one-line error when there is none or it cannot run here."""
    base = runtime_name.partition(":")[0]
    for name in QUANTIZERS.names():
        if base in QUANTIZERS.get(name).runtimes:
            quantizer = QUANTIZERS.create(name)
            ok, why = quantizer.available()
            if not ok:
                raise EdgepruneError(f"int8 not available on {runtime_name}: {why}")
            return quantizer
    raise EdgepruneError(
        f"int8 not available on {runtime_name}: no int8 quantization backend for it (int8 runs on "
        f"{', '.join(int8_runtimes())}); use --precision fp32 or one of those runtimes"
    )
