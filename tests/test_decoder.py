"""The decoder pipeline's parts that need no transformers (the door and the whole run are in
tests_zoo/test_causal_lm.py): the per-token budget, the shape search's cost model, candidates and
its loop."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.budget import parse_budget
from edgeprune.pipeline.decoder import search
from edgeprune.pipeline.decoder.shape import Shape, shape_of

OLD = Shape(layers=4, kv_heads=2, q_per_kv=4, intermediate=384)
TRAFFIC = search.Traffic(hidden=128, head_dim=32, context=64)


def true_ms(s: Shape) -> float:
    """A made-up target whose time rises with what a step reads, steeper past a cache's size."""
    x = TRAFFIC(s) / 1e6
    return 0.05 + 0.2 * x + 0.3 * max(0.0, x - 0.8)


def test_a_per_token_budget_reads_as_milliseconds() -> None:
    b = parse_budget("25ms/token")
    assert b.is_latency and b.value == 25.0 and not b.relative
    assert parse_budget("0.5 s / token").value == 500.0


def test_the_cost_model_goes_through_what_was_measured_and_never_falls_with_traffic() -> None:
    points = [(s, true_ms(s)) for s in search.probes(OLD, 16, lambda s: True)]
    assert len(points) == 6 and points[0][0] == OLD
    model = search.CostModel(points, TRAFFIC)
    for s, ms in points:
        assert model.predict(s) == pytest.approx(ms)
    shapes = sorted(
        {search.Shape(n, kv, q, w) for n in (1, 2, 3, 4) for kv in (1, 2) for q in (1, 4) for w in (16, 384)},
        key=TRAFFIC,
    )
    predicted = [model.predict(s) for s in shapes]
    assert predicted == sorted(predicted)
    noisy = search.CostModel([*points, (Shape(3, 2, 4, 384), true_ms(OLD) * 1.5)], TRAFFIC)  # a burst: read high
    assert noisy.predict(OLD) >= noisy.predict(Shape(3, 2, 4, 384))  # still monotone
    near = Shape(3, 2, 4, 200)
    corrected = search.CostModel([*points, (near, 2 * true_ms(near))], TRAFFIC)  # the target said otherwise
    assert corrected.predict(near) == pytest.approx(2 * true_ms(near))  # a measurement overrides the curve there


def test_candidates_are_the_widest_mlp_under_the_limit_for_each_shape_the_config_allows() -> None:
    model = search.CostModel([(s, true_ms(s)) for s in search.probes(OLD, 16, lambda s: True)], TRAFFIC)
    limit = true_ms(OLD) / 2
    odd_heads = {s for s in search.frontier(OLD, model, limit, 16, "auto", lambda s: True) if s.heads % 2}
    assert odd_heads  # 3 heads in one group fit under the limit ...
    even = search.frontier(OLD, model, limit, 16, "auto", lambda s: s.heads % 2 == 0)
    assert even and all(s.heads % 2 == 0 for s in even)  # ... until the config refuses odd head counts
    for s in even:
        assert s.intermediate % 16 == 0 and model.predict(s) <= limit
        wider = Shape(s.layers, s.kv_heads, s.q_per_kv, s.intermediate + 16)
        assert s.intermediate == OLD.intermediate or model.predict(wider) > limit
    assert {s.layers for s in search.frontier(OLD, model, limit, 16, "off", lambda s: True)} == {OLD.layers}
    only = search.frontier(OLD, model, limit, 16, "only", lambda s: True)
    assert only and all((s.kv_heads, s.q_per_kv, s.intermediate) == (2, 4, 384) for s in only)


def run_search(kl: Any, under: Any, max_candidates: int = 4, speed: float = 1.0) -> dict[str, Any]:
    """The search on the made-up target, `speed` x faster than the probes said."""
    measured = [(s, true_ms(s)) for s in search.probes(OLD, 16, lambda s: True)]
    timed: list[Shape] = []

    def decide(s: Shape) -> tuple[bool, float, dict[str, Any]]:
        timed.append(s)
        ok = under(s)
        return ok, true_ms(s) * speed, {"verdict": "under" if ok else "over"}

    result = search.search(
        OLD, 32, measured, true_ms(OLD) / 2, 16, "auto", kl, decide, lambda s: True, TRAFFIC, max_candidates, print
    )
    result["timed"] = timed
    return result


def test_the_search_times_the_candidate_that_moves_the_outputs_least_first() -> None:
    result = run_search(kl=lambda s: 1.0 / s.layers + 0.01 * (8 - s.heads), under=lambda s: True)
    chosen = Shape.from_dict(result["shape"])
    assert result["timed"] == [chosen] and chosen.layers == 4  # fewest layers lost: lowest KL
    assert true_ms(chosen) >= (1 - search.BAND) * true_ms(OLD) / 2  # within the band under the budget


def test_a_candidate_decided_over_is_learned_from_and_another_tried() -> None:
    verdicts = iter([False, True])  # the target is slower than the cost model said, once
    result = run_search(kl=lambda s: 1.0 / s.layers, under=lambda s: next(verdicts))
    assert [t["under"] for t in result["tried"]] == [False, True]
    assert result["timed"][0] != result["timed"][1]


def test_a_candidate_far_under_the_budget_does_not_end_the_search() -> None:
    result = run_search(kl=lambda s: 1.0 / s.layers + 1.0 / (s.intermediate + s.heads), under=lambda s: True, speed=0.6)
    assert len(result["tried"]) == 4 and all(t["under"] for t in result["tried"])  # each far under: proposed again
    best = min(result["tried"], key=lambda t: t["kl"])
    assert result["shape"] == best["shape"]  # of those under, the one that moves the outputs least


def test_no_candidate_under_leaves_no_shape_and_a_line_naming_the_way() -> None:
    result = run_search(kl=lambda s: 0.0, under=lambda s: False, max_candidates=3)
    assert result["shape"] is None and len(result["tried"]) == 3
    err = search.no_shape(result, OLD, 1.0, 0.5, "off")
    assert "no shape met the budget in 3 tries" in str(err) and "--depth auto" in str(err)
    assert "narrowest shape" in str(search.no_shape(result, OLD, 1.0, 2.0, "auto"))


@pytest.mark.parametrize(
    ("field", "says"),
    [
        ("intermediate_size", "gives intermediate_size per layer"),
        ("num_key_value_heads", "do not split into 3 key/value groups"),
    ],
)
def test_a_config_with_per_layer_widths_or_uneven_groups_is_refused(field: str, says: str) -> None:
    """One width per kind for all layers is what every runtime loads (a per-layer list is refused),
    and query heads split whole into key/value groups."""
    config = {
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "intermediate_size": 384,
        "hidden_size": 128,
    }
    config[field] = [384, 256, 384, 256] if field == "intermediate_size" else 3
    with pytest.raises(EdgepruneError, match=says):
        shape_of(SimpleNamespace(**config), "LlamaForCausalLM")
    ok = SimpleNamespace(**(config | {field: 384 if field == "intermediate_size" else 2}))
    assert shape_of(ok, "LlamaForCausalLM") == (Shape(4, 2, 4, 384), 16)
