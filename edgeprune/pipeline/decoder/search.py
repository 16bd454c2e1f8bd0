"""Choosing the decoder's shape for a per-token budget: a cost model fitted to measured shapes
proposes, the outputs choose, the target decides.

1. A handful of probe shapes (the model itself, half its layers, half its MLP, half its heads, the
   narrowest) are cut, exported and timed on the target; the time per token is modelled as a
   monotone curve in what a decode step reads (`Traffic`), through the measured shapes (`CostModel`).
2. For every expressible (layers, key/value groups, heads per group), the widest MLP the model
   predicts under the budget is a candidate, if predicted within `BAND` of it (a shape far under
   the budget gives capacity away); each is cut with the calibration scores and scored by how far
   its next-token distributions move from the unpruned model's (KL on held-out tokens, before any
   recovery).
3. The candidates are timed in order of that KL, interleaved with the baseline until the decision
   rule says under or over (decision.py); every timed candidate joins the fitted points and the
   candidates are proposed again. The search ends at a candidate decided under the budget and
   within `CLOSE` of it (a shape far under it gives capacity away: a first run here stopped at 3 of
   8 layers at 0.26 of the baseline against a 0.5 budget, its probes timed while other jobs ran),
   or after --max-candidates; of those decided under, the lowest KL is the shape.

The probes are timed interleaved with the baseline's step and kept as ratios to it (times the
baseline stage's ms): absolute times drift by tens of percent between minutes on a shared machine,
ratios within one interleaved run do not.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.decoder.shape import Shape

#: most candidates scored by KL per proposal (each is a cut and a forward over the held-out tokens)
MAX_SCORED = 48
#: a candidate decided under the budget and measured above this fraction of it ends the search
CLOSE = 0.9
#: candidates are shapes predicted within this fraction under the budget (a shape far under it gives
#: away capacity the budget allows); below it only when no shape falls in the band
BAND = 0.2


@dataclasses.dataclass(frozen=True)
class Traffic:
    """What a decode step reads in its layers, in elements: each layer's projection weights (query
    and output per query head, key and value per group, three MLP matrices) and its attention over
    the cache (per query head and per group: eager attention expands each group to its heads). A
    step at batch 1 is bound by what it reads, so its time rises with this, though not always in
    proportion (a model whose weights fit the CPU's caches may run faster per byte)."""

    hidden: int
    head_dim: int
    context: int

    def __call__(self, s: Shape) -> float:
        units = s.heads + s.kv_heads
        per_layer = 2 * self.hidden * self.head_dim * units + 3 * self.hidden * s.intermediate
        return float(s.layers * (per_layer + self.context * self.head_dim * units))


@dataclasses.dataclass
class CostModel:
    """ms per token as a monotone piecewise-linear function of the traffic through the measured
    shapes (their running maximum: reading more never makes a step faster), proportional beyond
    the ends. Local, so a measurement near the budget corrects what the probes far from it say: a
    global fit (least squares on layers, widths and heads) to probes timed while other processes
    loaded the machine kept predicting 7.3 ms for shapes the target then ran in 2.4-3.9 ms, and six
    candidates went by without reaching the budget's neighbourhood."""

    points: list[tuple[Shape, float]]
    traffic: Callable[[Shape], float]
    #: the curve and the number of points it was computed from
    _cached: tuple[int, tuple[np.ndarray, np.ndarray]] | None = dataclasses.field(default=None, init=False, repr=False)

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """The measured (traffic, ms) points, sorted, repeated traffic averaged, made monotone;
        computed again only when a point was added (the frontier predicts thousands of shapes)."""
        if self._cached is not None and self._cached[0] == len(self.points):
            return self._cached[1]
        by_x: dict[float, list[float]] = {}
        for s, ms in self.points:
            by_x.setdefault(self.traffic(s), []).append(ms)
        xs = np.array(sorted(by_x))
        ys = np.maximum.accumulate(np.array([float(np.mean(by_x[x])) for x in xs]))
        self._cached = (len(self.points), (xs, ys))
        return xs, ys

    def predict(self, s: Shape) -> float:
        xs, ys = self.curve()
        x = self.traffic(s)
        if x <= xs[0]:
            return float(ys[0] * x / xs[0]) if xs[0] > 0 else float(ys[0])
        if x >= xs[-1]:
            return float(ys[-1] * x / xs[-1])
        return float(np.interp(x, xs, ys))


def probes(old: Shape, round_to: int, allowed: Callable[[Shape], bool]) -> list[Shape]:
    """Shapes that pull each term of the cost model apart from the others (those the config allows)."""
    half_mlp = max(round_to, old.intermediate // 2 // round_to * round_to)
    shapes = [
        old,
        dataclasses.replace(old, layers=max(1, old.layers // 2)),
        dataclasses.replace(old, intermediate=half_mlp),
        dataclasses.replace(old, q_per_kv=max(1, old.q_per_kv // 2)),
        dataclasses.replace(old, kv_heads=max(1, old.kv_heads // 2)),
        Shape(1, 1, 1, min(round_to, old.intermediate)),
    ]
    return [s for s in dict.fromkeys(shapes) if allowed(s)]


def narrowest(old: Shape, round_to: int) -> Shape:
    return Shape(1, 1, 1, min(round_to, old.intermediate))


def frontier(
    old: Shape, model: CostModel, limit_ms: float, round_to: int, depth: str, allowed: Callable[[Shape], bool]
) -> list[Shape]:
    """For each (layers, groups, heads per group) the config allows, the widest MLP (a multiple of
    `round_to`) the cost model puts under `limit_ms`; the layer count stays under --depth off, and
    only it moves under --depth only."""
    layer_counts = [old.layers] if depth == "off" else range(1, old.layers + 1)
    widths = sorted({*range(round_to, old.intermediate + 1, round_to), old.intermediate})
    out = []
    for layers, kv, q in itertools.product(layer_counts, range(1, old.kv_heads + 1), range(1, old.q_per_kv + 1)):
        if (depth == "only" and (kv, q) != (old.kv_heads, old.q_per_kv)) or not allowed(Shape(layers, kv, q, 1)):
            continue
        fits = [
            w
            for w in (widths if depth != "only" else [old.intermediate])
            if model.predict(Shape(layers, kv, q, w)) <= limit_ms
        ]
        if fits:
            out.append(Shape(layers, kv, q, fits[-1]))
    return out


def params_of(s: Shape, head_dim: int) -> int:
    """The weights a shape keeps in its layers, over the hidden size (which no shape changes): for
    ordering candidates, more kept first."""
    return s.layers * (s.heads * head_dim * 2 + s.kv_heads * head_dim * 2 + 3 * s.intermediate)


@dataclasses.dataclass
class Tried:
    shape: Shape
    kl: float
    predicted_ms: float
    decision: dict[str, Any]
    ms: float
    under: bool


def search(
    old: Shape,
    head_dim: int,
    measured: list[tuple[Shape, float]],
    limit_ms: float,
    round_to: int,
    depth: str,
    kl_of: Callable[[Shape], float],
    decide: Callable[[Shape], tuple[bool, float, dict[str, Any]]],
    allowed: Callable[[Shape], bool],
    traffic: Callable[[Shape], float],
    max_candidates: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The shape, and every step that led to it (module docstring). `measured`: the probes' ms;
    `kl_of`: a cut shape's KL on held-out tokens; `decide`: a shape timed against the baseline
    (under?, its ms, the decision); `allowed`: whether the config can state a shape; `traffic`:
    what a shape's step reads (the cost model's axis)."""
    cost = CostModel(list(measured), traffic)
    tried: list[Tried] = []
    kls: dict[Shape, float] = {}
    while len(tried) < max_candidates:
        options = [
            s for s in frontier(old, cost, limit_ms, round_to, depth, allowed) if s not in {t.shape for t in tried}
        ]
        if not options:
            break
        near = [s for s in options if cost.predict(s) >= (1 - BAND) * limit_ms]
        options = sorted(near or options, key=lambda s: -params_of(s, head_dim))[:MAX_SCORED]
        for s in options:
            if s not in kls:
                kls[s] = kl_of(s)
        shape = min(options, key=lambda s: (kls[s], -params_of(s, head_dim)))
        predicted = cost.predict(shape)
        under, ms, decision = decide(shape)
        tried.append(Tried(shape, kls[shape], predicted, decision, ms, under))
        close = under and ms >= CLOSE * limit_ms
        log(
            f"  candidate {len(tried)}: {shape.describe()}: KL {kls[shape]:.4f}, predicted {predicted:.3f} ms, "
            f"measured {ms:.3f} ms: {'under' if under else 'over'} the budget"
            + (" but far from it: proposing again" if under and not close else "")
        )
        if close:
            break
        cost.points.append((shape, ms))
    chosen = min((t for t in tried if t.under), key=lambda t: (t.kl, -params_of(t.shape, head_dim)), default=None)
    return {
        "probes": [{"shape": s.to_dict(), "ms": ms} for s, ms in measured],
        "cost_model": {"traffic": [float(x) for x in cost.curve()[0]], "ms": [float(y) for y in cost.curve()[1]]},
        "scored": len(kls),
        "tried": [dataclasses.asdict(t) | {"shape": t.shape.to_dict()} for t in tried],
        "shape": chosen.shape.to_dict() if chosen else None,
    }


def no_shape(result: dict[str, Any], old: Shape, limit_ms: float, narrowest_ms: float, depth: str) -> EdgepruneError:
    """Why no shape was chosen, with what would reach the budget."""
    if narrowest_ms > limit_ms:
        return EdgepruneError(
            f"infeasible: the narrowest shape a config can state (1 layer, 1 key/value group of 1 head, the "
            f"narrowest MLP) takes {narrowest_ms:.3f} ms per token on this target, over the budget's "
            f"{limit_ms:.3f} ms; raise the budget, shorten --context, or choose a faster runtime"
        )
    more = "" if depth in ("auto", "on") else "; --depth auto lets whole layers go too"
    return EdgepruneError(
        f"no shape met the budget in {len(result['tried'])} tries ({old.describe()} to start, "
        f"{limit_ms:.3f} ms per token asked){more}; raise --max-candidates or the budget"
    )


def kl_divergence(teacher_logits: Sequence[torch.Tensor], student_logits: Sequence[torch.Tensor]) -> float:
    """Mean KL(teacher || student) of the next-token distributions over every position."""
    total, n = 0.0, 0
    for t, s in zip(teacher_logits, student_logits):
        p = torch.log_softmax(t.float(), -1)
        q = torch.log_softmax(s.float(), -1)
        total += float((p.exp() * (p - q)).sum(-1).sum())
        n += t.shape[0] * t.shape[1]
    return total / max(n, 1)
