"""`Budget`: what the compressed model must meet, parsed from the text a user types.

Accepted: ``20ms``, ``0.02s``, ``p90<=20ms`` (the p90 instead of the median), ``2x`` (speed-up over
the measured baseline), ``50%`` (of the baseline latency), ``300MFLOPs`` / ``1.2GFLOPs``,
``1.5Mparams`` / ``2M params``. Relative budgets become absolute once the baseline is measured.
"""

from __future__ import annotations

import dataclasses
import re

from edgeprune.errors import EdgepruneError

_SI = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
_UNITS = {"flops": "FLOPs", "params": "params", "latency": "ms"}


@dataclasses.dataclass(frozen=True)
class Budget:
    metric: str  # "latency" | "flops" | "params"
    value: float  # ms for latency, a count otherwise; for relative budgets the fraction of baseline
    relative: bool = False  # value is a fraction of the baseline figure
    statistic: str = "median"  # which latency statistic must be within budget
    text: str = ""
    #: for a resolved relative budget, the fraction of the baseline it allows: such a budget is
    #: checked on latency *ratios* timed interleaved with the baseline, robust to machine drift
    fraction: float | None = None

    @property
    def is_latency(self) -> bool:
        return self.metric == "latency"

    @property
    def baseline_fraction(self) -> float:
        """`fraction`, for code that holds a resolved relative budget (any other budget is a TypeError)."""
        if self.fraction is None:
            raise TypeError(f"budget {self.text or self.value} is not a resolved relative budget")
        return float(self.fraction)

    def resolve(self, baseline: float) -> Budget:
        """The absolute budget given the baseline's figure for this metric."""
        if not self.relative:
            return self
        return dataclasses.replace(self, value=baseline * self.value, relative=False, fraction=self.value)

    def met_by(self, value: float) -> bool:
        if self.relative:
            raise ValueError("resolve() a relative budget against the baseline first")
        return value <= self.value

    def describe(self) -> str:
        if self.relative:
            return f"{self.value:.0%} of baseline {self.metric}"
        if self.is_latency and self.fraction is not None:
            return (
                f"{self.statistic} <= {self.fraction:.0%} of baseline "
                f"(~{self.value:.3f} ms at the baseline's own measurement)"
            )
        if self.is_latency:
            return f"{self.statistic} <= {self.value:.3f} ms"
        return f"<= {self.quantity(self.value)}"

    def quantity(self, value: float) -> str:
        """`value` (absolute, in this budget's metric) with its unit: "0.2598 ms", "12.3M FLOPs"."""
        return f"{value:.4g} ms" if self.is_latency else f"{_human(value)} {_UNITS[self.metric]}"


def _human(v: float) -> str:
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g}{prefix}"
    return f"{v:.3g}"


_LATENCY = re.compile(r"^(?:(p50|p90|median)\s*<=?\s*)?([0-9]*\.?[0-9]+)\s*(ms|s|us)(?:\s*/\s*token)?$", re.I)
_COUNT = re.compile(r"^([0-9]*\.?[0-9]+)\s*([kKMG]?)\s*(flops|macs|params)$", re.I)
_SPEEDUP = re.compile(r"^([0-9]*\.?[0-9]+)\s*x$", re.I)
_PERCENT = re.compile(r"^([0-9]*\.?[0-9]+)\s*%$")


def parse_budget(text: str) -> Budget:
    t = text.strip()
    if m := _LATENCY.match(t):
        stat = (m.group(1) or "median").lower().replace("p50", "median")
        scale = {"ms": 1.0, "s": 1e3, "us": 1e-3}[m.group(3).lower()]
        value = float(m.group(2)) * scale
        return _positive(Budget("latency", value, statistic=stat, text=t), t)
    if m := _COUNT.match(t):
        unit = m.group(3).lower()
        metric = "params" if unit == "params" else "flops"
        return _positive(Budget(metric, float(m.group(1)) * _SI[m.group(2)], text=t), t)
    if m := _SPEEDUP.match(t):
        speedup = float(m.group(1))
        if speedup <= 1.0:
            raise EdgepruneError(f"budget {t!r} asks for no speed-up; give a factor above 1, e.g. 2x")
        return Budget("latency", 1.0 / speedup, relative=True, text=t)
    if m := _PERCENT.match(t):
        pct = float(m.group(1))
        if not 0 < pct < 100:
            raise EdgepruneError(f"budget {t!r} must be between 0% and 100% of the baseline latency, e.g. 50%")
        return Budget("latency", pct / 100.0, relative=True, text=t)
    raise EdgepruneError(
        f"cannot read budget {text!r}; use e.g. 20ms, p90<=20ms, 2x, 50%, 300MFLOPs, 1.5Mparams, "
        "or 25ms/token for a language model"
    )


def _positive(b: Budget, text: str) -> Budget:
    if b.value <= 0:
        raise EdgepruneError(f"budget {text!r} must be positive")
    return b
