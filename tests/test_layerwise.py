"""The layerwise search: sensitivity per layer, a cost table and its predictor, allocation by one multiplier."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.pipeline.budget import parse_budget
from edgeprune.pipeline.counting import count
from edgeprune.pipeline.methods import get_method
from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.space import discover
from edgeprune.pipeline.search import layerwise, sensitivity
from edgeprune.pipeline.search.cost_model import CostModel
from edgeprune.pipeline.search.objective import CountObjective
from tests.coupling_models import Concat, Depthwise
from tests.synthetic import learnable_npz
from tests.test_cli import run_cli
from tests.tiny_models import tiny_resnet

X = (torch.randn(1, 3, 32, 32),)


class TwoBranches(nn.Module):
    """Two parallel conv branches summed into the classifier: `a` carries the signal (large
    weights), `b` almost nothing (tiny weights). Narrowing `a` must cost more than narrowing `b`."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(3, 32, 3, padding=1)
        self.ha, self.hb = nn.Linear(32, 10), nn.Linear(32, 10)
        with torch.no_grad():
            self.b.weight.mul_(1e-3)
            self.b.bias.mul_(1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ha(torch.relu(self.a(x)).mean((2, 3))) + self.hb(torch.relu(self.b(x)).mean((2, 3)))


def two_branches() -> tuple[nn.Module, object, dict, dict]:
    """A seeded `TwoBranches`, its pruning space, L1 scores and sensitivity at widths of 8."""
    torch.manual_seed(0)
    model = TwoBranches().eval()
    space = discover(model, X)
    scores = get_method("l1").scores(model, space, X)
    return (
        model,
        space,
        scores,
        sensitivity.sensitivity(model, space, scores, X, torch.randn(64, 3, 32, 32), round_to=8),
    )


def test_sensitivity_is_monotone_and_finds_the_layer_that_matters() -> None:
    _model, _space, _scores, sens = two_branches()
    for drops in sens.values():
        widths = sorted(drops)
        assert all(drops[w1] >= drops[w2] for w1, w2 in itertools.pairwise(widths))  # non-increasing in width
        assert drops[widths[-1]] == 0.0
    assert sens["a"][8] > 100 * sens["b"][8]


def test_monotone_fix() -> None:
    assert sensitivity.monotone({4: 0.5, 8: 0.7, 12: 0.1, 16: 0.0}) == {4: 0.7, 8: 0.7, 12: 0.1, 16: 0.0}


def test_reestimated_batchnorm_matches_the_data() -> None:
    bn_net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()
    images = torch.randn(128, 3, 8, 8) * 3 + 2
    sensitivity.reestimate_bn(bn_net, images)
    feats = bn_net[0](images)
    assert torch.allclose(bn_net[1].running_mean, feats.mean((0, 2, 3)), atol=1e-4)
    assert not bn_net.training


@pytest.fixture(scope="module")
def tiny_search():
    torch.manual_seed(0)
    model = tiny_resnet().eval()
    space = discover(model, X)
    scores = get_method("l1").scores(model, space, X)
    sens = sensitivity.sensitivity(model, space, scores, X, torch.randn(32, 3, 32, 32), round_to=4)
    base = count(model, X).flops
    objective = CountObjective(parse_budget(f"{0.5 * base / 1e6:.4f}MFLOPs"), X)
    cost = CostModel(model, space, X)
    table = layerwise.build_cost_table(model, X, space, scores, sens, objective, base, cost)
    return model, space, scores, sens, objective, table, base, cost


def test_cost_table_predicts_single_group_plans_exactly_and_others_closely(tiny_search) -> None:
    model, space, scores, sens, objective, table, _base, cost = tiny_search
    gid = space.groups[0].id
    w = min(sens[gid])
    pruned = apply(copy.deepcopy(model), layerwise.plan_for(space, scores, {gid: w}), X)
    assert table.predict({gid: w}, cost) == pytest.approx(count(pruned, X).flops)  # what the table measured
    errors = layerwise.predictor_error(model, X, space, scores, sens, lambda w, r: table.predict(w, cost, r), objective)
    assert len(errors) == layerwise.HELD_OUT
    # with the overlap of coupled layers counted, FLOPs are predicted closely; what the cost model
    # leaves out (BN, pooling, biases) weighs most on the narrowest plans
    errs = sorted(abs(r["error"]) for r in errors)
    assert errs[len(errs) // 2] < 0.05 and errs[-1] < 0.3, errs


def test_allocation_narrows_monotonically_and_meets_the_budget(tiny_search) -> None:
    model, space, scores, sens, objective, table, _base, cost = tiny_search
    search = layerwise.LayerwiseSearch(
        model, X, space, scores, sens, lambda w, r: table.predict(w, cost, r), objective, tol=0.2
    )
    costs = [search.predicted(search.choice_at(lam)) for lam in (0.0, 1e-9, 1e-6, 1e-3, 1.0)]
    assert all(c1 >= c2 for c1, c2 in itertools.pairwise(costs))  # more weight on cost, never a costlier plan
    result = search.run()
    pruned = apply(copy.deepcopy(model), result.plan, X)
    assert count(pruned, X).flops <= objective.budget.value
    assert result.plan.meta["search"] == "layerwise"


def test_next_target_interpolates_between_measured_candidates() -> None:
    """One candidate each side of the goal: the goal's place between their measurements carried
    onto their predictions; one side only: the nearest one's bias; the lambda fallback in between."""
    over, under = layerwise.Point(1.0, 12.0, 11.0), layerwise.Point(4.0, 6.0, 4.0)
    # halfway in measured -> halfway in predicted
    assert layerwise.next_target([over, under], 7.5) == pytest.approx(9.0)
    far_over = layerwise.Point(0.5, 14.0, 13.0)
    assert layerwise.next_target([far_over, over], 8.0) == pytest.approx(12.0 * 8.0 / 11.0)
    assert layerwise.between([far_over, over, under], 7.5) == pytest.approx(2.0)
    assert layerwise.between([over], 7.5) is None


def test_search_converges_under_a_plan_dependent_bias(tiny_search) -> None:
    """A predictor over-predicting narrow plans more than wide ones (a layer timed alone pays a
    fixed cost the model does not) still ends at least on the best plan of the multiplier's path
    within the budget (the tiny model's path jumps from 52 % to 5 % of its FLOPs)."""
    model, space, scores, sens, objective, table, base, cost = tiny_search
    biased = lambda w, r: (p := table.predict(w, cost, r)) * (1.0 + 0.8 * (1.0 - p / base))  # noqa: E731
    search = layerwise.LayerwiseSearch(model, X, space, scores, sens, biased, objective, tol=0.15)
    result = search.run()
    flops = lambda widths: count(apply(copy.deepcopy(model), layerwise.plan_for(space, scores, widths), X), X).flops  # noqa: E731
    path = {tuple(sorted(search.choice_at(lam)[0].items())) for lam in np.geomspace(1e-10, 1e-2, 400)}
    best = max(f for f in (flops(dict(c)) for c in path) if f <= objective.budget.value)
    assert best <= flops({g: len(k.keep) for g, k in result.plan.groups.items()}) <= objective.budget.value
    assert len(result.steps) <= 4  # (the ratio correction alone ended at 5 % of the FLOPs here)


def test_a_repeated_proposal_moves_the_target_on(tiny_search) -> None:
    """Every candidate so far over budget and the proposal already measured: the next proposal is a
    new, cheaper plan instead of the end of the search (it ended there, with nothing within budget)."""
    model, space, scores, sens, objective, table, base, cost = tiny_search
    predict = lambda w, r: table.predict(w, cost, r)  # noqa: E731
    search = layerwise.LayerwiseSearch(model, X, space, scores, sens, predict, objective)
    target = 0.6 * base
    lam, first = search._propose(target, [], target, set())
    over = [layerwise.Point(lam, predict(*first), 1.2 * target)]
    again = search._propose(target, over, target, {search._key(*first)})
    assert again is not None and search._key(*again[1]) != search._key(*first)
    assert predict(*again[1]) < predict(*first)


def test_layerwise_from_the_cli_reports_the_predictor(tmp_path: Path) -> None:
    npz = learnable_npz(tmp_path / "d.npz", n_train=32, n_test=16, size=32, classes=10)
    torch.save(tiny_resnet(), tmp_path / "m.pt")
    base = count(tiny_resnet(), X).flops
    rc, _, err = run_cli(
        [
            tmp_path / "m.pt",
            "--budget",
            f"{0.55 * base / 1e6:.3f}MFLOPs",
            "--input-shape",
            "1x3x32x32",
            "--search",
            "layerwise",
            "--data",
            npz,
            "--recover",
            "none",
            "--round-to",
            "4",
            "--out",
            tmp_path / "o",
        ]
    )
    assert rc == 0, err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["search"]["strategy"] == "layerwise" and rep["final"]["flops"] <= 0.55 * base
    assert len(rep["search"]["predictor"]["held_out"]) == layerwise.HELD_OUT
    # another budget in the same output folder reuses the sensitivity map (it does not depend on the budget)
    rc, out, err = run_cli(
        [
            tmp_path / "m.pt",
            "--budget",
            f"{0.7 * base / 1e6:.3f}MFLOPs",
            "--input-shape",
            "1x3x32x32",
            "--search",
            "layerwise",
            "--data",
            npz,
            "--recover",
            "none",
            "--round-to",
            "4",
            "--out",
            tmp_path / "o",
        ]
    )
    assert rc == 0, err
    assert "[sensitivity] resumed" in out + err and "[cost_table] done" in out + err
    rc, _, err = run_cli(
        [
            tmp_path / "m.pt",
            "--budget",
            "50%",
            "--input-shape",
            "1x3x32x32",
            "--search",
            "layerwise",
            "--out",
            tmp_path / "o2",
        ]
    )
    assert rc == 2 and "--data" in err


class FakeRuntime:
    """Stands in for the target: 'times' a session as its conv/gemm MACs at 1 ns each plus a fixed
    call overhead, so the table's arithmetic (overhead removed, coupling, interpolation) can be
    checked exactly without a noisy clock."""

    name = "fake"
    artifact_format = "onnx"
    atol = rtol = 1e-3
    OVERHEAD_MS = 0.05
    cpu_time_is_latency = False  # its "times" are computed, not timed

    def __init__(self) -> None:
        from edgeprune.runtime_bench import get_runtime

        self.ort = get_runtime("ort-cpu", threads=1)

    def settings(self) -> dict:
        return {"runtime": self.name}

    def exporter_options(self) -> dict:
        return {}

    def load(self, path: str):
        import onnx

        proto = onnx.load(path)
        return self.ort.load(path), macs_of(proto)

    def run(self, session, inputs):
        return self.ort.run(session[0], inputs)

    def warm(self, session, inputs, n):
        for _ in range(n):
            self.run(session, inputs)

    def measure(self, session, inputs, warmup=10, repeats=50):
        from edgeprune.runtime_bench.base import LatencyStats

        ms = self.OVERHEAD_MS + session[1] * 1e-6
        return LatencyStats.from_runs([ms] * repeats, warmup=warmup)


def macs_of(proto) -> float:
    """Conv/Gemm MACs of an ONNX graph from its weight shapes and the inferred output shapes."""
    from onnx import shape_inference

    g = shape_inference.infer_shapes(proto).graph
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*g.value_info, *g.output]}
    inits = {t.name: list(t.dims) for t in g.initializer}
    total = 0.0
    for n in g.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits:
            w = inits[n.input[1]]
            out = dims[n.output[0]]
            per_out = int(np.prod(w[1:])) if n.op_type == "Conv" else w[0] if n.op_type == "MatMul" else w[1]
            total += float(np.prod(out)) * per_out
    return total


def on_fake_target(make):
    """A seeded model from `make`, its pruning space, L1 scores, cost model and the fake runtime."""
    torch.manual_seed(0)
    model = make().eval()
    space = discover(model, X)
    return model, space, get_method("l1").scores(model, space, X), CostModel(model, space, X), FakeRuntime()


@pytest.mark.parametrize("make", [tiny_resnet, Depthwise, Concat], ids=["residual", "depthwise", "concat"])
def test_latency_table_predicts_coupled_widths_from_single_layers(tmp_path: Path, make) -> None:
    from edgeprune.pipeline.search import latency_table

    model, space, scores, cost, rt = on_fake_target(make)
    layers_ms = cost.total * 1e-6  # the fake runtime's time for all layers, overhead removed
    table = latency_table.build(model, X, cost, rt, layers_ms, layers_ms, round_to=4, cache=tmp_path / "cache.json")
    assert table.overhead_ms == pytest.approx(rt.OVERHEAD_MS, rel=1e-3)
    sizes = {g.id: g.size for g in space.groups}
    assert table.predict({}, sizes, cost) == pytest.approx(layers_ms)
    # every group narrowed to a grid width: the layers' time is exactly the pruned model's MACs
    widths = {g.id: min(sensitivity.candidate_widths(g, 4)) for g in space.groups}
    plan = layerwise.plan_for(space, scores, widths)
    pruned = apply(copy.deepcopy(model), plan, X)
    assert table.predict(widths, sizes, cost) == pytest.approx(float(cost.flops(plan)) * 1e-6, rel=1e-6)
    assert count(pruned, X).flops < cost.total
    # time outside the layers (0.01 ms here) shrinks with the activations the layers write, never grows
    with_rest = dataclasses.replace(table, baseline=layers_ms + 0.01, baseline_ms=layers_ms + 0.01)
    assert with_rest.predict({}, sizes, cost) == pytest.approx(layers_ms + 0.01)
    extra = with_rest.predict(widths, sizes, cost) - float(cost.flops(plan)) * 1e-6
    assert 0.0 < extra < 0.01
    # a second build measures nothing: every entry comes from the cache
    lines: list[str] = []
    latency_table.build(
        model, X, cost, rt, layers_ms, layers_ms, round_to=4, cache=tmp_path / "cache.json", on_entry=lines.append
    )
    assert lines and all(" 0 timed" in line for line in lines)


def test_calibration_removes_the_bias_of_layers_timed_alone(tmp_path: Path) -> None:
    """Layers timed alone cost 30 % more than inside the model (their own layout reorders) plus a
    fixed cost each (their dispatch): the uncalibrated table over-predicts every plan; fitted to six
    measured plans it predicts held-out plans exactly (the fake runtime's time is MACs plus a fixed
    call, the table's entries an affine map of it: ratio = a x layers + c, c < 0 here)."""
    from edgeprune.pipeline.measure import TargetMeasurer
    from edgeprune.pipeline.search import latency_table
    from edgeprune.pipeline.search.objective import LatencyObjective

    model, space, scores, cost, rt = on_fake_target(tiny_resnet)
    whole_ms = rt.OVERHEAD_MS + cost.total * 1e-6  # what the fake target measures for the unpruned model
    table = latency_table.build(model, X, cost, rt, whole_ms, whole_ms, round_to=4, cache=tmp_path / "cache.json")
    per_layer = rt.OVERHEAD_MS
    alone = dataclasses.replace(
        table, entries={sig: {k: 1.3 * v + per_layer for k, v in e.items()} for sig, e in table.entries.items()}
    )
    sizes = {g.id: g.size for g in space.groups}
    sens = {g.id: dict.fromkeys(sensitivity.candidate_widths(g, 4), 0.0) for g in space.groups}
    objective = LatencyObjective(parse_budget("1000ms"), TargetMeasurer(rt, X, tmp_path / "m", warmup=1, repeats=3))
    plans = layerwise.calibration_plans(sens, ())
    kept = [np.mean([w[g] / sizes[g] for g in w]) for w, _ in plans]
    assert kept[0] < kept[-1]  # the calibration plans span narrow to wide
    ratios = [v / whole_ms for v in layerwise.measure_plans(model, X, space, scores, plans, objective, "calibration")]
    calibrated = alone.calibrated(plans, ratios, sizes, cost)
    a, b, c = calibrated.coefficients
    entries_full = 1.3 * cost.total * 1e-6 + len(alone.shapes) * per_layer  # the table's full-width sum
    assert a == pytest.approx(entries_full / (1.3 * whole_ms), rel=1e-3) and b == pytest.approx(0.0, abs=1e-3)
    assert c == pytest.approx(1.0 - a, abs=1e-9) and c < 0
    uncalibrated = layerwise.predictor_error(
        model, X, space, scores, sens, lambda w, r: alone.predict(w, sizes, cost, r), objective
    )
    held = layerwise.predictor_error(
        model, X, space, scores, sens, lambda w, r: calibrated.predict(w, sizes, cost, r), objective
    )
    assert all(row["error"] > 0.1 for row in uncalibrated)
    assert all(abs(row["error"]) < 0.01 for row in held)
    assert latency_table.LatencyTable.from_dict(calibrated.to_dict()).coefficients == pytest.approx(
        calibrated.coefficients
    )


def test_fit_ratio_stays_physical() -> None:
    """Exact data gives its coefficients back, a negative fixed part included; data that would need
    a negative layer or activation part gets the best fit with both >= 0 and the baseline its own
    ratio (a + b + c = 1)."""
    from edgeprune.pipeline.search.latency_table import fit_ratio

    rng = np.random.default_rng(0)
    feats = rng.uniform(0.4, 1.0, size=(6, 2))
    exact = [(lay, w, 0.6 * lay + 0.3 * w + 0.1) for lay, w in feats]
    assert fit_ratio(exact) == pytest.approx((0.6, 0.3, 0.1), abs=1e-9)
    # faster than the layers shrink: a fixed cost per layer timed alone
    steep = [(lay, w, 1.3 * lay - 0.3) for lay, w in feats]
    assert fit_ratio(steep) == pytest.approx((1.3, 0.0, -0.3), abs=1e-9)
    wider_is_faster = [(lay, w, 1.2 - 0.4 * w + 0.2 * lay) for lay, w in feats]  # b < 0 is not physical: held at 0
    a, b, c = fit_ratio(wider_is_faster)
    assert min(a, b) >= 0.0 and b == 0.0 and a + b + c == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one measured plan"):
        fit_ratio([])


def test_latency_table_grid_keeps_the_ends_and_aligned_widths() -> None:
    from edgeprune.pipeline.search import latency_table

    g = latency_table.grid(64, True, 8, points=4)
    assert g[0] == 8 and g[-1] == 64 and len(g) == 4 and all(w % 8 == 0 for w in g)
    assert latency_table.grid(64, False, 8) == [64]


def test_depth_enters_the_trade_off() -> None:
    """Blocks' drops on the groups' scale; a block goes once lambda prices its saving above its
    drop; the cost table's prediction of a removal matches the count; the search meets the budget."""
    from edgeprune.models import create
    from edgeprune.pipeline.prune import blocks

    torch.manual_seed(0)
    model = create("resnet20").eval()
    space = discover(model, X)
    scores = get_method("l1").scores(model, space, X)
    found = [b.name for b in blocks.find_blocks(model, X)]
    drops = sensitivity.block_sensitivity(model, found, torch.randn(16, 3, 32, 32))
    assert set(drops) == set(found) and all(d > 0 for d in drops.values())
    base = count(model, X).flops
    objective = CountObjective(parse_budget(f"{0.8 * base / 1e6:.4f}MFLOPs"), X)
    cost = CostModel(model, space, X)
    full = {g.id: {g.size: 0.0} for g in space.groups}  # widths stay whole: depth alone is traded here
    table = layerwise.CostTable(
        base, {g: dict.fromkeys(d, 0.0) for g, d in full.items()}, 1.0, {g.id: g.size for g in space.groups}
    )
    predict = lambda w, r: table.predict(w, cost, r)  # noqa: E731
    pruned = apply(copy.deepcopy(model), layerwise.plan_for(space, scores, {}, removed=found[:1]), X)
    assert predict({}, found[:1]) == pytest.approx(count(pruned, X).flops, rel=0.02)
    search = layerwise.LayerwiseSearch(model, X, space, scores, full, predict, objective, tol=0.2, block_drops=drops)
    assert search.choice_at(0.0)[1] == ()
    assert set(search.choice_at(1e6)[1]) == set(found)  # everything priced away at a huge lambda
    price = {
        b: drops[b] / search.block_savings[b] for b in found
    }  # drop per FLOP saved: the first to go is the cheapest
    cheapest = min(price, key=price.get)
    assert search.choice_at(1.0001 * price[cheapest])[1] == (cheapest,)
    result = search.run()
    assert result.plan.removed_blocks
    assert count(apply(copy.deepcopy(model), result.plan, X), X).flops <= objective.budget.value
