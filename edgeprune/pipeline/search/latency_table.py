"""Per-layer latency table (NetAdapt / HALP style): each Conv/Linear timed alone on the target.

A plan's latency is mostly its convolutions' and matmuls', and each of those depends on two widths:
the channels it reads (its input group's kept count) and the channels it writes (its own group's).
Timing single-group prunings of the whole model (the first predictor tried here) misses that
coupling and the width-specific kernel effects: a layer at (24, 40) channels is not the average of
(16, 32) and (32, 48) on a vectorized runtime. So each layer is rebuilt alone (same kernel, stride,
padding, input size) at a grid of (c_in, c_out) widths, exported and timed on the target runtime,
the grid's configurations of one layer shape interleaved (BENCHMARKING.md). The session-call
overhead, timed on a trivial model, is subtracted from each entry, since the whole model pays it
once, not once per layer.

A plan's prediction, as a ratio to the unpruned model, is a x (its layers' time at the plan's
widths from the table, bilinear between grid points, over theirs at full width) + b x (the
activations its layers write, over theirs at full width: BN and activations ORT did not fuse, adds,
pooling and copies scale with them) + c (what does not shrink: session call, input and output).
Uncalibrated, a is the layers' share of the measured baseline and b the rest's. But a layer timed
alone is not the layer inside the model: alone it pays its own layout reorders in and out and their
dispatch (three nodes instead of one), inside the model ORT keeps the blocked layout between
convolutions and fuses BN, ReLU and adds into them; on ResNet-20 the layers timed alone add up to
more than the whole model. So a, b, c (a + b + c = 1: the baseline is its own ratio) are fitted to a
few whole plans measured on the target, of widths spread from narrow to full (`calibrated`), and the
predictor's error is reported on other, held-out plans. c may be negative: a fixed cost per layer
that the table counts and the model does not pay shrinks less than the layers' compute, so narrow
plans measure faster than their entries add up to (MobileNetV2's 52 small layers: +76 % at 10 % of
the baseline with c held at >= 0; with it free, fitted on 6 plans, 18 others within 10 %). A
prediction is never below the cost of a session call. Layers of the same shape share entries, and
the entries are cached on disk per runtime, threads and CPU so that another model with the same
layer shapes measures nothing again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from edgeprune import atomic
from edgeprune.pipeline.counting import run_hooked_layers
from edgeprune.pipeline.measure import TargetMeasurer
from edgeprune.pipeline.prune import blocks
from edgeprune.pipeline.prune.select import width_step
from edgeprune.pipeline.prune.space import PruningSpace
from edgeprune.pipeline.search.cost_model import CostModel
from edgeprune.runtime_bench import Runtime

if TYPE_CHECKING:
    from edgeprune.pipeline.search.base import SearchContext

#: grid points per prunable dimension (the full width and the narrowest candidate included)
GRID_POINTS = 4


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """What a Conv/Linear layer's latency depends on besides its two widths."""

    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    input_size: tuple[int, ...]  # spatial size (conv) or leading token dims (linear), batch excluded
    output_positions: int = 1  # output elements per output channel (H x W, or tokens)
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    depthwise: bool = False

    def signature(self) -> str:
        """The cache key: every field but the widths, which index the entries."""
        d = dataclasses.asdict(self)
        del d["in_channels"], d["out_channels"]
        return json.dumps(d, sort_keys=True)

    def module(self, c_in: int, c_out: int) -> nn.Module:
        if self.kind == "linear":
            return nn.Linear(c_in, c_out)
        groups = c_in if self.depthwise else 1
        # a Conv2d's: 2-tuples each (the fields take any length, as JSON lists load)
        k, s, p, d = (cast(tuple[int, int], t) for t in (self.kernel, self.stride, self.padding, self.dilation))
        return nn.Conv2d(c_in, c_out, k, s, p, d, groups=groups)

    def example(self, c_in: int) -> torch.Tensor:
        if self.kind == "linear":
            return torch.randn(1, *self.input_size, c_in)
        return torch.randn(1, c_in, *self.input_size)


def layer_shapes(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[str, LayerShape]:
    """Each plain Conv2d / Linear layer's shape on the example inputs (grouped convs other than
    depthwise, 1-D/3-D convs and layers called twice are left out: their cost stays in the rest)."""
    shapes: dict[str, LayerShape] = {}
    seen: set[str] = set()

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if name in seen:
                shapes.pop(name, None)
                return
            seen.add(name)
            x, positions = args[0], out.numel() // out.shape[1 if out.dim() == 4 else -1]
            if isinstance(mod, nn.Linear):
                shapes[name] = LayerShape("linear", mod.in_features, mod.out_features, tuple(x.shape[1:-1]), positions)
            elif (
                isinstance(mod, nn.Conv2d)
                and mod.padding_mode == "zeros"
                and isinstance(mod.padding, tuple)
                and (mod.groups == 1 or mod.groups == mod.in_channels == mod.out_channels)
            ):
                shapes[name] = LayerShape(
                    "conv",
                    mod.in_channels,
                    mod.out_channels,
                    tuple(x.shape[2:]),
                    positions,
                    tuple(mod.kernel_size),
                    tuple(mod.stride),
                    tuple(mod.padding),
                    tuple(mod.dilation),
                    mod.groups > 1,
                )

        return fn

    run_hooked_layers(model, example_inputs, hook)
    return shapes


def grid(size: int, prunable: bool, round_to: int, points: int = GRID_POINTS) -> list[int]:
    """The widths a dimension is timed at: `points` of its candidate multiples, evenly spread and
    always including the narrowest and the full width (just the full width when not prunable)."""
    if not prunable:
        return [size]
    step = width_step(size, "channels", round_to)
    candidates = sorted({*range(step, size, step), size})
    if len(candidates) <= points:
        return candidates
    picks = np.linspace(0, len(candidates) - 1, points).round().astype(int)
    return sorted({candidates[i] for i in picks})


def _bracket(values: list[int], x: float) -> tuple[int, int, float]:
    """The two grid values around `x` and x's position between them (clamped to the grid)."""
    x = min(max(x, values[0]), values[-1])
    hi = next(i for i, v in enumerate(values) if v >= x)
    if values[hi] == x or hi == 0:
        return values[hi], values[hi], 0.0
    lo = hi - 1
    return values[lo], values[hi], (x - values[lo]) / (values[hi] - values[lo])


@dataclasses.dataclass
class LatencyTable:
    shapes: dict[str, LayerShape]
    grids: dict[str, tuple[list[int], list[int]]]  # layer -> (c_in grid, c_out grid)
    entries: dict[str, dict[str, float]]  # signature -> "c_in,c_out" -> ms, overhead subtracted
    baseline: float  # the unpruned model's value on the objective's scale
    baseline_ms: float  # the unpruned model's latency as measured by the same runtime in this table
    overhead_ms: float  # a session call's fixed cost, already subtracted from the entries
    #: (a, b, c) of the ratio a x layers + b x written + c, fitted by `calibrated`; None: uncalibrated
    coefficients: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        # the full-width sums every prediction divides by, computed once (the search predicts thousands of plans)
        self._full_ms = sum(self.layer_ms(n, s.in_channels, s.out_channels) for n, s in self.shapes.items())
        self._full_written = float(sum(s.output_positions * s.out_channels for s in self.shapes.values()))

    @property
    def full_sums(self) -> tuple[float, float]:
        """The layers' time and the activations they write at full width: what `features` divides by."""
        return self._full_ms, self._full_written

    def layer_ms(self, name: str, c_in: float, c_out: float) -> float:
        """The layer's time at these widths: bilinear between its grid points (along the diagonal
        for a depthwise conv, whose input and output widths are one)."""
        shape, (gin, gout) = self.shapes[name], self.grids[name]
        table = self.entries[shape.signature()]
        o0, o1, to = _bracket(gout, c_out)
        if shape.depthwise:
            return (1 - to) * table[f"{o0},{o0}"] + to * table[f"{o1},{o1}"]
        i0, i1, ti = _bracket(gin, c_in)
        at = lambda i, o: table[f"{i},{o}"]  # noqa: E731
        return (1 - ti) * ((1 - to) * at(i0, o0) + to * at(i0, o1)) + ti * ((1 - to) * at(i1, o0) + to * at(i1, o1))

    def features(
        self, widths: Mapping[str, int], sizes: Mapping[str, int], cost: CostModel, removed: Sequence[str] = ()
    ) -> tuple[float, float]:
        """The plan's layers' time and the activations they write, each over its full-width value."""
        keep = {g: w / sizes[g] for g, w in widths.items()}
        total = written = 0.0
        for name, shape in self.shapes.items():
            if blocks.inside(name, removed):
                continue
            f_in, f_out = cost.shares(name, keep)
            total += self.layer_ms(name, shape.in_channels * f_in, shape.out_channels * f_out)
            written += shape.output_positions * shape.out_channels * f_out
        return (total / self._full_ms if self._full_ms else 1.0), (
            written / self._full_written if self._full_written else 1.0
        )

    @property
    def terms(self) -> tuple[float, float, float]:
        """The (a, b, c) predictions use: fitted by `calibrated`, else `uncalibrated`."""
        return self.coefficients or self.uncalibrated()

    def uncalibrated(self) -> tuple[float, float, float]:
        """The layers at their share of the measured baseline, the rest at its (none when the
        layers timed alone already add up to more than the model)."""
        share = self._full_ms / self.baseline_ms if self.baseline_ms else 1.0
        return share, max(0.0, 1.0 - share), 0.0

    def predict(
        self, widths: Mapping[str, int], sizes: Mapping[str, int], cost: CostModel, removed: Sequence[str] = ()
    ) -> float:
        """The objective's value for a plan keeping `widths[gid]` of each group's `sizes[gid]` units
        and removing the `removed` blocks."""
        layers, written = self.features(widths, sizes, cost, removed)
        a, b, c = self.terms
        # no plan runs faster than an empty call
        floor = self.overhead_ms / self.baseline_ms if self.baseline_ms else 0.0
        return self.baseline * max(a * layers + b * written + c, floor)

    def calibrated(
        self,
        plans: Sequence[tuple[Mapping[str, int], Sequence[str]]],
        ratios: Sequence[float],
        sizes: Mapping[str, int],
        cost: CostModel,
    ) -> LatencyTable:
        """This table with (a, b, c) fitted to whole plans measured on the target: `plans` of
        (widths, removed blocks) and their measured `ratios` to the baseline."""
        samples = [
            (*self.features(widths, sizes, cost, removed), ratio) for (widths, removed), ratio in zip(plans, ratios)
        ]
        return dataclasses.replace(self, coefficients=fit_ratio(samples))

    def to_dict(self) -> dict[str, Any]:
        return {
            "shapes": {n: dataclasses.asdict(s) for n, s in self.shapes.items()},
            "grids": {n: [list(a), list(b)] for n, (a, b) in self.grids.items()},
            "entries": self.entries,
            "baseline": self.baseline,
            "baseline_ms": self.baseline_ms,
            "overhead_ms": self.overhead_ms,
            "coefficients": list(self.coefficients) if self.coefficients else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyTable:
        shapes = {n: LayerShape(**_lists_as_tuples(s)) for n, s in d["shapes"].items()}
        coefficients = d.get("coefficients")
        return cls(
            shapes,
            {n: (list(a), list(b)) for n, (a, b) in d["grids"].items()},
            d["entries"],
            d["baseline"],
            d["baseline_ms"],
            d["overhead_ms"],
            tuple(coefficients) if coefficients else None,
        )


class LatencyCost(CostModel):
    """The table's prediction as a `CostModel`: each layer costs its time at its kept widths plus
    the activations it writes, at the table's coefficients and on the objective's scale, so that a
    search built on FLOPs (guided.py's allocation and fill) trades sensitivity against latency on
    the target instead. FLOPs misprice small and unaligned layers: on a 32x32 ResNet-20 at
    --budget 50% the layerwise search, allocating against this table, kept 7 % more FLOPs per unit
    of measured latency than the FLOPs-guided search (0.343 of the FLOPs at 0.487 of the latency,
    against 0.306 at 0.467). Uncalibrated (no whole plan measured), its level may be
    off, but the allocation only compares what layers save, and the search's interpolation
    between measured candidates corrects the level."""

    name = "latency_table"
    unit = "budget"

    def __init__(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], table: LatencyTable
    ) -> None:
        self.table = table
        a, b, c = table.terms
        full_ms, full_written = table.full_sums
        self._per_ms = table.baseline * a / full_ms if full_ms else 0.0
        self._per_written = table.baseline * b / full_written if full_written else 0.0
        self.fixed = table.baseline * c
        super().__init__(model, space, example_inputs)

    def layer_cost(self, name: str, f_in: Any, f_out: Any) -> Any:
        shape = self.table.shapes.get(name)
        if shape is None:  # a layer the table leaves out: its time is in the rest, which the activations term scales
            return 0.0
        return (
            self._per_ms * self.table.layer_ms(name, shape.in_channels * f_in, shape.out_channels * f_out)
            + self._per_written * shape.output_positions * shape.out_channels * f_out
        )


def of_run(ctx: SearchContext, cost: CostModel) -> LatencyTable:
    """The run's table as a resumable stage, for the searches that use it (timed on the first
    budget; its entries are cached on disk, so other budgets and models with the same layer shapes
    time nothing again)."""
    s = ctx.settings
    table_d = ctx.stage(
        "latency_table",
        lambda: build(
            ctx.model,
            ctx.inputs,
            cost,
            ctx.measurer.runtime,
            ctx.baseline_value,
            ctx.baseline["latency_ms"]["median"],
            s.round_to,
            on_entry=ctx.log,
        ).to_dict(),
    )
    return LatencyTable.from_dict(table_d)


def fit_ratio(samples: Sequence[tuple[float, float, float]]) -> tuple[float, float, float]:
    """(a, b, c) with a, b >= 0 and a + b + c = 1 minimizing the relative error of a x layers +
    b x written + c against the measured ratios (least squares weighted by 1 / measured).

    The equality is the baseline, which is its own ratio exactly; the signs keep the model
    physical (nothing gets faster by being wider). c is free: below zero it is the fixed cost per
    layer that timing layers alone adds (module docstring). With two sign-constrained coefficients
    the optimum is the unconstrained one when it is feasible, else on an axis (the other at zero) or
    at the origin; each is solved and the best feasible one kept.
    """
    if not samples:
        raise ValueError("calibrating a latency table needs at least one measured plan")
    x = np.array(samples, dtype=float)
    weight = 1.0 / np.maximum(x[:, 2], 1e-9)
    y = (x[:, 2] - 1.0) * weight  # ratio - 1 = a (layers - 1) + b (written - 1), c = 1 - a - b
    span = np.stack([(x[:, 0] - 1.0) * weight, (x[:, 1] - 1.0) * weight], axis=1)
    candidates = [np.zeros(2)]
    for j in range(2):  # one coefficient alone, the other at zero
        column = span[:, j]
        candidates.append(np.eye(2)[j] * max(0.0, float(column @ y) / max(float(column @ column), 1e-18)))
    solution, *_ = np.linalg.lstsq(span, y, rcond=None)
    if (solution >= 0).all():
        candidates.append(solution)
    a, b = (float(v) for v in min(candidates, key=lambda ab: float(np.sum((span @ ab - y) ** 2))))
    return a, b, 1.0 - a - b


def cache_path(runtime: Runtime) -> Path:
    """Where this runtime's entries are kept across runs: per runtime settings and CPU (the table
    is only true on the machine, runtime and threads it was timed with)."""
    key = json.dumps(
        {**runtime.settings(), "cpu": platform.processor() or platform.machine(), "node": platform.node()},
        sort_keys=True,
    )
    root = Path(os.environ.get("EDGEPRUNE_CACHE_DIR", Path.home() / ".cache" / "edgeprune"))
    return root / "latency_tables" / f"{runtime.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _load_cache(path: Path) -> dict[str, dict[str, float]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _lists_as_tuples(fields: dict[str, Any]) -> dict[str, Any]:
    """A LayerShape's fields as JSON stored them, its tuples back from lists."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def _save_cache(path: Path, stored: dict[str, dict[str, float]]) -> None:
    with contextlib.suppress(OSError):  # a read-only home (a container user): the table still works, it is not kept
        atomic.write_json(path, stored)


class _Trivial(nn.Module):
    """The least work a session call can do: what every timed layer pays on top of its own compute."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0


def build(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    cost: CostModel,
    runtime: Runtime,
    baseline: float,
    baseline_ms: float,
    round_to: int,
    warmup: int = 10,
    repeats: int = 200,
    on_entry: Callable[[str], None] = lambda line: None,
    cache: Path | None = None,
) -> LatencyTable:
    """Time every layer shape of `model` at its grid of widths on `runtime` (cached entries reused)."""
    shapes = layer_shapes(model, example_inputs)
    grids = {
        n: (
            grid(s.in_channels, cost.prunable_input(n) and not s.depthwise, round_to),
            grid(s.out_channels, cost.prunable_output(n), round_to),
        )
        for n, s in shapes.items()
    }
    cache = cache or cache_path(runtime)
    stored = _load_cache(cache)
    needed: dict[str, tuple[LayerShape, set[tuple[int, int]]]] = {}
    for n, s in shapes.items():
        gin, gout = grids[n]
        pairs = {(o, o) for o in gout} if s.depthwise else {(i, o) for i in gin for o in gout}
        needed.setdefault(s.signature(), (s, set()))[1].update(pairs)
    with tempfile.TemporaryDirectory(prefix="latency_table_") as work:
        trivial = TargetMeasurer(runtime, (torch.randn(1, 1),), Path(work), warmup, repeats)
        overhead = trivial.measure(_Trivial(), "overhead").stats.median  # type: ignore[union-attr]
        entries: dict[str, dict[str, float]] = {}
        for k, (sig, (shape, pairs)) in enumerate(needed.items(), 1):
            have = stored.get(sig, {})
            missing = sorted(p for p in pairs if f"{p[0]},{p[1]}" not in have)
            if missing:
                _time_shape(shape, missing, runtime, Path(work), warmup, repeats, overhead, have)
                stored[sig] = have
                _save_cache(cache, stored)
            entries[sig] = {f"{i},{o}": have[f"{i},{o}"] for i, o in pairs}
            on_entry(
                f"  latency table: layer shape {k}/{len(needed)}: "
                f"{len(missing)} timed, {len(pairs) - len(missing)} cached"
            )
    return LatencyTable(shapes, grids, entries, baseline, baseline_ms, overhead)


def _time_shape(
    shape: LayerShape,
    pairs: list[tuple[int, int]],
    runtime: Runtime,
    work: Path,
    warmup: int,
    repeats: int,
    overhead: float,
    into: dict[str, float],
) -> None:
    """Time one layer shape at `pairs` of widths, interleaved per input width (one example input each)."""
    by_in: dict[int, list[int]] = {}
    for i, o in pairs:
        by_in.setdefault(i, []).append(o)
    for c_in, outs in by_in.items():
        measurer = TargetMeasurer(runtime, (shape.example(c_in),), work, warmup, repeats)
        loaded = [measurer.prepare(shape.module(c_in, o).eval(), f"layer_{c_in}_{o}") for o in outs]
        for o, stats in zip(outs, measurer.interleaved(loaded)):
            into[f"{c_in},{o}"] = max(0.0, stats.median - overhead)
