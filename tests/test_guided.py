"""The default search (guided.py): bracket along a path, then fill the gap by width steps, most
valuable per predicted FLOP first, until a candidate lands in the window under the budget."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeprune.models import create
from edgeprune.pipeline.budget import Budget
from edgeprune.pipeline.methods import get_method
from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.select import plan_at_level, widths_key
from edgeprune.pipeline.prune.space import discover
from edgeprune.pipeline.search import _guides, guided, latency_table
from edgeprune.pipeline.search.cost_model import CostModel
from edgeprune.pipeline.search.layerwise import plan_for
from edgeprune.pipeline.search.level_search import LevelSearch
from edgeprune.pipeline.search.objective import CountObjective
from tests.test_layerwise import on_fake_target, two_branches
from tests.test_search import OverheadLatency, X


def level_guide(model: nn.Module, objective: object, round_to: int = 16) -> _guides.LevelGuide:
    space = discover(model, X)
    scores = get_method("l1").scores(model, space, X)
    return _guides.LevelGuide(LevelSearch(model, X, space, scores, objective, round_to, "l1"))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def resnet20() -> nn.Module:
    torch.manual_seed(0)
    return create("resnet20").eval()


def test_fill_steps_are_single_width_steps_most_valuable_per_flop_first(resnet20: nn.Module) -> None:
    guide = level_guide(resnet20, CountObjective(Budget("flops", 1.0), X))
    start = guide.levels.plan(0.6)
    ceiling = guide.cost.flops(guide.levels.plan(0.4))
    steps = _guides.fill_sequence(guide, start, ceiling, round_to=16)
    assert steps and all(a.flops < b.flops <= ceiling for a, b in itertools.pairwise(steps))
    counts = _guides.counts_of(guide.space, start)
    sizes = {g.id: tuple(len(s) for s in g.segments) for g in guide.space.groups}
    # the first step, found by brute force on whole plans: the option with the most score share per FLOP
    options = []
    for g in guide.space.groups:
        for wider in _guides.widenings(g, counts[g.id], 16):
            plan = _guides.plan_of(guide.space, guide.scores, {**counts, g.id: wider}, (), {})
            added = guide.cost.flops(plan) - guide.cost.flops(start)
            options.append((guide.gain(g, counts[g.id], wider) / added, g.id, wider, guide.cost.flops(plan)))
    best = max(o for o in options if o[3] <= ceiling)
    assert (steps[0].group, steps[0].counts) == best[1:3]
    assert steps[0].flops == pytest.approx(best[3])  # the incremental FLOPs agree with the whole plan's
    for step in steps:  # each step widens one group by one width step
        old = counts[step.group]
        assert (
            step.counts != old
            and sum(step.counts) > sum(old)
            and all(n <= s for n, s in zip(step.counts, sizes[step.group]))
        )
        counts[step.group] = step.counts


@pytest.mark.parametrize("fraction", [0.7, 0.5, 0.35])
def test_guided_lands_within_five_percent_under_the_budget(resnet20: nn.Module, fraction: float) -> None:
    baseline = OverheadLatency(Budget("latency", 1.0)).latency(resnet20)
    objective = OverheadLatency(Budget("latency", baseline * fraction))
    result = guided.Guided(resnet20, X, level_guide(resnet20, objective), objective, round_to=16, tol=0.05).run(
        baseline
    )
    budget = objective.budget.value
    assert budget * 0.95 <= result.evaluation.value <= budget, result.stop_reason
    assert len(result.steps) == objective.calls <= 6
    pruned = apply(copy.deepcopy(resnet20), result.plan, X)
    assert objective.latency(pruned) == pytest.approx(result.evaluation.value)  # the plan returned is the one measured


def test_the_fill_reaches_what_the_level_path_cannot(resnet20: nn.Module) -> None:
    """On a ResNet-20 the global level's plans near 50 % of this latency lie far apart: the level
    search alone stops well under the budget, the fill lands in the window."""
    baseline = OverheadLatency(Budget("latency", 1.0)).latency(resnet20)
    fraction = 0.5
    uniform_obj, guided_obj = (OverheadLatency(Budget("latency", baseline * fraction)) for _ in range(2))
    guide = level_guide(resnet20, guided_obj)
    uniform = LevelSearch(resnet20, X, guide.space, guide.scores, uniform_obj, 16, "l1", tol=0.05).run(baseline)
    result = guided.Guided(resnet20, X, guide, guided_obj, round_to=16, tol=0.05).run(baseline)
    assert uniform.evaluation.value < 0.95 * uniform_obj.budget.value, "the case no longer shows the gap"
    assert result.evaluation.value >= 0.95 * guided_obj.budget.value
    assert any(s.scalar == "fill" for s in result.steps)


def test_no_finer_plan_is_said_and_the_plan_under_is_kept(resnet20: nn.Module) -> None:
    """A budget between two neighbouring fill plans with a window too narrow to hit: the search
    ends on the closest plan under it and names the step that crosses it."""
    counted = CountObjective(Budget("flops", 1.0), X)
    guide = level_guide(resnet20, counted)
    total = guide.cost.total
    start = guide.levels.plan(0.55)
    steps = _guides.fill_sequence(guide, start, guide.cost.flops(guide.levels.plan(0.45)), round_to=16)
    k = len(steps) // 2
    between = (steps[k - 1].flops + steps[k].flops) / 2  # strictly between two neighbouring fill plans
    objective = CountObjective(Budget("flops", between), X)
    result = guided.Guided(
        resnet20, X, level_guide(resnet20, objective), objective, round_to=16, tol=1e-9, max_candidates=30
    ).run(total)
    assert result.stop_reason.startswith("no finer plan"), result.stop_reason
    assert result.evaluation.within and result.evaluation.value <= between
    assert all(s.evaluation.value <= result.evaluation.value for s in result.steps if s.within_budget)


def test_with_sensitivity_the_fill_gives_back_the_layer_that_matters_first() -> None:
    model, space, scores, sens = two_branches()
    cost = CostModel(model, space, X)
    guide = _guides.SensitivityGuide.for_cost(
        model, X, space, scores, sens, CountObjective(Budget("flops", 1.0), X), cost
    )
    narrow = plan_at_level(space, scores, 0.75, 8)  # both branches at 8 of 32 channels, the same FLOPs each
    steps = _guides.fill_sequence(guide, narrow, cost.total, round_to=8)
    assert [s.group for s in steps[:3]] == ["a", "a", "a"]  # `a` carries the signal: all of it back before `b`
    assert steps[3].group == "b"


class TwoShapes(nn.Module):
    """Two parallel branches of equal FLOPs but different layer shapes (3x3 and 1x9 kernels), so a
    per-layer latency table can price them apart where FLOPs cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(3, 32, (1, 9), padding=(0, 4))
        self.ha, self.hb = nn.Linear(32, 10), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ha(torch.relu(self.a(x)).mean((2, 3))) + self.hb(torch.relu(self.b(x)).mean((2, 3)))


def flops_cost(model: nn.Module, space: object) -> CostModel:
    return CostModel(model, space, X)  # type: ignore[arg-type]


def latency_cost(tmp_path: Path, b_slower: float) -> tuple[nn.Module, object, dict, latency_table.LatencyCost]:
    """`TwoShapes` on the fake target (time = MACs), its table's entries for b's kernel made
    `b_slower` times slower, as that table's `LatencyCost`."""
    model, space, scores, flops, rt = on_fake_target(TwoShapes)
    ms = flops.total * 1e-6
    table = latency_table.build(model, X, flops, rt, ms, ms, round_to=8, cache=tmp_path / "cache.json")
    b_sig = table.shapes["b"].signature()
    table = dataclasses.replace(
        table,
        entries={
            sig: {k: v * (b_slower if sig == b_sig else 1.0) for k, v in e.items()} for sig, e in table.entries.items()
        },
    )
    return model, space, scores, latency_table.LatencyCost(model, space, X, table)


def test_the_latency_cost_is_the_tables_prediction_and_prices_one_width_step_alone(tmp_path: Path) -> None:
    model, space, scores, cost = latency_cost(tmp_path, b_slower=4.0)
    sizes = {g.id: g.size for g in space.groups}
    assert cost.total == pytest.approx(cost.table.predict({}, sizes, flops_cost(model, space)))
    widths = {"a": 16, "b": 8}
    plan = plan_for(space, scores, widths)
    assert cost.flops(plan) == pytest.approx(cost.table.predict(widths, sizes, flops_cost(model, space)))
    # what the fill adds for one step, priced on the layers it touches, is the whole plans' difference
    counts = _guides.counts_of(space, plan)
    seg = {g.id: tuple(len(x) for x in g.segments) for g in space.groups}
    wider = {**counts, "b": (16,)}
    added = cost.flops_at(wider, seg, (), cost.touching["b"]) - cost.flops_at(counts, seg, (), cost.touching["b"])
    assert added == pytest.approx(cost.flops(plan_for(space, scores, {"a": 16, "b": 16})) - cost.flops(plan))
    assert added > 0 and cost.unit == "budget"


def test_against_latency_the_allocation_narrows_what_is_slow_on_the_target(tmp_path: Path) -> None:
    """`a` costs half the accuracy of `b` per channel removed, and the same FLOPs: against FLOPs `a`
    narrows first; on a target where b's layer runs 4 times slower, `b` does."""
    model, space, scores, lat = latency_cost(tmp_path, b_slower=4.0)
    sens = {
        g.id: {w: (g.size - w) / g.size * (2.0 if g.id == "b" else 1.0) for w in (8, 16, 24, 32)} for g in space.groups
    }
    objective = CountObjective(Budget("flops", 1.0), X)
    for cost, narrower in ((flops_cost(model, space), "a"), (lat, "b")):
        guide = _guides.SensitivityGuide.for_cost(model, X, space, scores, sens, objective, cost)
        plan = guide.propose(0.7 * cost.total)[1]
        widths = {g: len(k.keep) for g, k in plan.groups.items()}
        wider = "a" if narrower == "b" else "b"
        assert widths[narrower] < widths[wider], (cost.unit, widths)


class DriftingLatency(OverheadLatency):
    """A measured-like latency (a drift allowance, so candidates in the window are confirmed)
    whose machine slows by `slowdown_at_confirm` (4 %) at the first confirmation and stays so: the ratio moves between
    two decisions on the same model, as observed on the shared machine."""

    drift = 0.02

    def __init__(self, budget: Budget) -> None:
        super().__init__(budget)
        self.slowdown, self.slowdown_at_confirm, self.tags = 1.0, 1.04, []

    def evaluate(self, model: nn.Module, tag: str) -> guided.Evaluation:
        self.calls += 1
        self.tags.append(tag)
        if tag.endswith("_confirm"):
            self.slowdown = self.slowdown_at_confirm
        value = self.latency(model) * self.slowdown
        return guided.Evaluation(value, counted_within=value <= self.budget.value * (1 - self.drift))


def confirms_of(steps: list, index: int) -> list:
    """The confirmations of candidate `index`, in order."""
    return [s for s in steps if s.scalar == "confirm" and s.index == index]


def test_a_candidate_in_the_window_is_confirmed_afresh_before_the_search_stops(resnet20: nn.Module) -> None:
    """The machine slows at the first confirmation and stays slow: the second decision disagrees,
    a third agrees with it, so the plan counts at what the slower machine reads (over the budget)
    and the allowance stays: the two readings that stand agree."""
    baseline = OverheadLatency(Budget("latency", 1.0)).latency(resnet20)
    objective = DriftingLatency(Budget("latency", baseline * 0.5))
    budget, lines = objective.budget.value, []
    result = guided.Guided(
        resnet20,
        X,
        level_guide(resnet20, objective),
        objective,
        round_to=16,
        tol=0.05,
        max_candidates=12,
        log=lines.append,
    ).run(baseline)
    confirms = [s for s in result.steps if s.scalar == "confirm"]
    assert confirms and not confirms[0].within_budget  # the machine slowed: the candidate in the window no longer fits
    rejected = next(s for s in result.steps if s.scalar != "confirm" and s.index == confirms[0].index)
    assert rejected.within_budget and rejected.evaluation.value >= 0.95 * budget  # it was in the window once
    again = confirms_of(result.steps, rejected.index)
    assert len(again) == 2 and not again[1].within_budget  # decided a third time, and over again
    assert again[1].evaluation.value == pytest.approx(again[0].evaluation.value)
    assert objective.drift == 0.02
    assert any(
        f"candidate {rejected.index} read" in line and "set aside (the other two agree within 0.0%)" in line
        for line in lines
    ), lines
    assert result.evaluation is not rejected.evaluation  # the search went on and did not return it
    assert result.evaluation.within and result.evaluation.value <= budget * (1 - objective.drift)
    # what is returned was decided again after the machine slowed (plans read before it may no longer fit)
    chosen = next(s for s in result.steps if s.evaluation is result.evaluation)
    assert any(c.index == chosen.index and c.within_budget for c in confirms[2:]) and confirms[-1].within_budget
    # confirmations are not candidates
    assert sum(s.scalar != "confirm" for s in result.steps) == len({s.index for s in result.steps})
    assert [t for t in objective.tags if t.endswith("_confirm")] == [
        f"candidate_{s.index:02d}_confirm" for s in confirms
    ]


class WanderingLatency(OverheadLatency):
    """The first plan confirmed reads 4 % higher at each decision on it (0, +4 %, +8.2 %): no two
    of its readings agree, the ratios wander further than the allowance; other plans read steady."""

    drift = 0.02

    def __init__(self, budget: Budget) -> None:
        super().__init__(budget)
        self.tags: list[str] = []
        self.wandering: str | None = None

    def evaluate(self, model: nn.Module, tag: str) -> guided.Evaluation:
        self.tags.append(tag)
        plan = tag.removesuffix("_confirm")
        if tag.endswith("_confirm") and self.wandering is None:
            self.wandering = plan
        decisions = sum(t.removesuffix("_confirm") == plan for t in self.tags)
        value = self.latency(model) * (1.04 ** (decisions - 1) if plan == self.wandering else 1.0)
        return guided.Evaluation(value, counted_within=value <= self.budget.value * (1 - self.drift))


def test_readings_that_wander_raise_the_drift_allowance_to_the_closest_two(resnet20: nn.Module) -> None:
    baseline = OverheadLatency(Budget("latency", 1.0)).latency(resnet20)
    objective = WanderingLatency(Budget("latency", baseline * 0.5))
    budget, lines = objective.budget.value, []
    result = guided.Guided(
        resnet20,
        X,
        level_guide(resnet20, objective),
        objective,
        round_to=16,
        tol=0.05,
        max_candidates=12,
        log=lines.append,
    ).run(baseline)
    first = int(objective.wandering.removeprefix("candidate_"))
    assert len(confirms_of(result.steps, first)) == 2
    # three readings 4 % apart each: the closest two moved 4 %, so candidates are now decided that far under
    assert objective.drift == pytest.approx(0.04)
    assert any(f"candidate {first} read" in line and "moved 4.0% apart" in line for line in lines), lines
    assert result.evaluation.within and result.evaluation.value <= budget * (1 - objective.drift)
    chosen = next(s for s in result.steps if s.scalar != "confirm" and s.evaluation.value == result.evaluation.value)
    assert chosen.index != first and result.stop_reason.startswith("within tolerance (at most 7% under")


def test_a_confirmation_that_agrees_leaves_the_window_where_it_was(resnet20: nn.Module) -> None:
    baseline = OverheadLatency(Budget("latency", 1.0)).latency(resnet20)
    objective = DriftingLatency(Budget("latency", baseline * 0.5))
    objective.slowdown_at_confirm = 1.005  # within the 2 % allowance
    result = guided.Guided(resnet20, X, level_guide(resnet20, objective), objective, round_to=16, tol=0.05).run(
        baseline
    )
    assert objective.drift == 0.02 and result.stop_reason.startswith("within tolerance (at most 5% under")
    assert result.steps[-1].scalar == "confirm" and result.evaluation is result.steps[-1].evaluation


def test_a_confirmation_keeps_the_higher_reading(resnet20: nn.Module) -> None:
    """The search stops on a candidate because it read low; its second, lower reading does not
    make it look further under the budget than its first did."""
    baseline = OverheadLatency(Budget("latency", 1.0)).latency(resnet20)
    objective = DriftingLatency(Budget("latency", baseline * 0.5))
    objective.slowdown_at_confirm = 0.99
    result = guided.Guided(resnet20, X, level_guide(resnet20, objective), objective, round_to=16, tol=0.05).run(
        baseline
    )
    confirm = result.steps[-1]
    assert confirm.scalar == "confirm" and result.stop_reason.startswith("within tolerance")
    first = next(s for s in result.steps if s.scalar != "confirm" and s.index == confirm.index)
    assert confirm.evaluation.value < first.evaluation.value and result.evaluation is first.evaluation


class SlowOnceConfirmed(OverheadLatency):
    """A measured-like latency that reads 6 % higher once, at the first confirmation only (a
    transient burst)."""

    drift = 0.02
    slower = 1.06

    def __init__(self, budget: Budget) -> None:
        super().__init__(budget)
        self.tags: list[str] = []

    def factor(self, tag: str) -> float:
        first_confirm = tag.endswith("_confirm") and sum(t.endswith("_confirm") for t in self.tags) == 1
        return self.slower if first_confirm else 1.0

    def evaluate(self, model: nn.Module, tag: str) -> guided.Evaluation:
        self.tags.append(tag)
        value = self.latency(model) * self.factor(tag)
        return guided.Evaluation(value, counted_within=value <= self.budget.value * (1 - self.drift))


def test_one_burst_in_a_confirmation_neither_rejects_the_plan_nor_raises_the_allowance(resnet20: nn.Module) -> None:
    """A ResNet-56 plan read 0.242 of the baseline, then 0.276 against a 0.25 budget: the third
    decision agrees with the first, so the burst is set aside and the search stops on the plan."""
    baseline = OverheadLatency(Budget("latency", 1.0)).latency(resnet20)
    objective = SlowOnceConfirmed(Budget("latency", baseline * 0.5))
    lines: list[str] = []
    result = guided.Guided(
        resnet20, X, level_guide(resnet20, objective), objective, round_to=16, tol=0.05, log=lines.append
    ).run(baseline)
    confirms = [s for s in result.steps if s.scalar == "confirm"]
    burst, third = confirms
    assert burst.index == third.index and not burst.within_budget and third.within_budget
    candidate = next(s for s in result.steps if s.scalar != "confirm" and s.index == burst.index)
    assert result.evaluation.value == pytest.approx(candidate.evaluation.value) and result.stop_reason.startswith(
        "within tolerance (at most 5% under"
    )
    assert objective.drift == 0.02
    assert any(f"{burst.evaluation.value:.4g} set aside (the other two agree within 0.0%)" in line for line in lines), (
        lines
    )


class UndecidedOnce(SlowOnceConfirmed):
    """The first confirmation reads the plan where it is but is left undecided (a wide interval)."""

    slower = 1.0

    def evaluate(self, model: nn.Module, tag: str) -> guided.Evaluation:
        ev = super().evaluate(model, tag)
        first_confirm = tag.endswith("_confirm") and sum(t.endswith("_confirm") for t in self.tags) == 1
        return dataclasses.replace(ev, counted_within=False) if first_confirm else ev


def test_a_plan_most_of_whose_decisions_are_under_holds(resnet20: nn.Module) -> None:
    """Three readings that agree, one of them left undecided: two of three decisions put the plan
    under the budget, so the search stops on it."""
    baseline = OverheadLatency(Budget("latency", 1.0)).latency(resnet20)
    objective = UndecidedOnce(Budget("latency", baseline * 0.5))
    lines: list[str] = []
    result = guided.Guided(
        resnet20, X, level_guide(resnet20, objective), objective, round_to=16, tol=0.05, log=lines.append
    ).run(baseline)
    undecided, third = [s for s in result.steps if s.scalar == "confirm"]
    assert undecided.index == third.index and not undecided.within_budget and third.within_budget
    assert result.stop_reason.startswith("within tolerance") and objective.drift == 0.02
    assert result.evaluation.value == pytest.approx(third.evaluation.value)
    assert not any("set aside" in line for line in lines)  # nothing was far from the rest


class FirstConfirmedReadsHigher(SlowOnceConfirmed):
    """The first plan confirmed reads 6 % higher at every decision after its first (its first
    reading was the low one)."""

    def factor(self, tag: str) -> float:
        confirmed = [t for t in self.tags if t.endswith("_confirm")]
        return self.slower if confirmed and tag == confirmed[0] else 1.0


def test_the_plan_returned_is_confirmed_even_when_no_candidate_lands_in_the_window(resnet20: nn.Module) -> None:
    """The search ends without a candidate in the window (no finer plan): its best plan under the
    budget is decided again before it is returned; when it no longer fits, the search goes on below
    it and says so."""
    baseline = OverheadLatency(Budget("latency", 1.0)).latency(resnet20)
    objective = FirstConfirmedReadsHigher(Budget("latency", baseline * 0.5))
    lines: list[str] = []
    result = guided.Guided(
        resnet20,
        X,
        level_guide(resnet20, objective),
        objective,
        round_to=16,
        tol=1e-9,
        max_candidates=30,
        log=lines.append,
    ).run(baseline)
    confirms = [s for s in result.steps if s.scalar == "confirm"]
    rejected = confirms[0]
    assert not rejected.within_budget and f"candidate {rejected.index}, timed afresh" in "\n".join(lines)
    assert len(confirms_of(result.steps, rejected.index)) == 2  # decided a third time: over again
    assert f"candidate {rejected.index} did not hold under the budget when timed afresh" in result.stop_reason
    assert objective.drift == 0.02  # its two later readings agree
    chosen = next(s for s in result.steps if s.scalar != "confirm" and s.evaluation is result.evaluation)
    assert chosen.index != rejected.index and any(c.index == chosen.index and c.within_budget for c in confirms[2:])
    assert result.evaluation.value <= objective.budget.value * (1 - objective.drift)


class ConfirmsReadHigher(SlowOnceConfirmed):
    """Every decision on a plan after its first reads 12 % higher: a machine whose ratios move
    further between a search's decision and a later one than the window is wide."""

    def evaluate(self, model: nn.Module, tag: str) -> guided.Evaluation:
        value = self.latency(model) * (1.12 if tag.endswith("_confirm") else 1.0)
        return guided.Evaluation(value, counted_within=value <= self.budget.value * (1 - self.drift))


def test_no_candidate_holding_when_timed_afresh_is_a_machine_too_noisy_stop(resnet20: nn.Module) -> None:
    """Candidates decided under the budget that all read over it when timed afresh are not a MET
    and not "no candidate met": the run stops with the one-line too-noisy error (exit 2)."""
    from edgeprune.pipeline.decision import TooNoisy

    baseline = OverheadLatency(Budget("latency", 1.0)).latency(resnet20)
    objective = ConfirmsReadHigher(Budget("latency", baseline * 0.5))
    with pytest.raises(
        TooNoisy,
        match=r"^machine too noisy to decide: candidates? [\d, ]+ decided under budget .* "
        r"moved up to 12\.0% between two decisions.*raise --max-candidates$",
    ):
        guided.Guided(
            resnet20, X, level_guide(resnet20, objective), objective, round_to=16, tol=1e-9, max_candidates=4
        ).run(baseline)


class LeftOpen(OverheadLatency):
    """A loaded machine: every decision reads its model where it is, but its interval straddles the
    line, so no candidate is ever decided under the budget."""

    drift = 0.02

    def evaluate(self, model: nn.Module, tag: str) -> guided.Evaluation:
        from edgeprune.pipeline.decision import UNDECIDED, Decision

        value, line = self.latency(model), self.budget.value * (1 - self.drift)
        d = Decision(UNDECIDED, value, value * 0.8, value * 1.3, line, 40, 40, 0.9, 30.0, False, 0.03)
        return guided.Evaluation(value, decision=d)


def test_candidates_read_under_but_left_undecided_are_a_machine_too_noisy_stop(resnet20: nn.Module) -> None:
    from edgeprune.pipeline.decision import TooNoisy

    baseline = OverheadLatency(Budget("latency", 1.0)).latency(resnet20)
    objective = LeftOpen(Budget("latency", baseline * 0.5))
    noisy = r"^machine too noisy to decide: candidates? [\d, ]+ read under budget .* left (them|it) undecided"
    with pytest.raises(TooNoisy, match=noisy):
        guided.Guided(resnet20, X, level_guide(resnet20, objective), objective, round_to=16, max_candidates=4).run(
            baseline
        )
    levels = level_guide(resnet20, objective).levels  # `--search uniform` ends the same way (search/base.none_met)
    levels.max_candidates = 4
    with pytest.raises(TooNoisy, match=noisy):
        levels.run(baseline)
    # a budget every candidate reads over stays "no candidate met": nothing was left open under it
    objective = LeftOpen(Budget("latency", baseline * 0.01))
    with pytest.raises(guided.EdgepruneError, match=r"^(no candidate met|budget .* is infeasible)"):
        guided.Guided(resnet20, X, level_guide(resnet20, objective), objective, round_to=16, max_candidates=4).run(
            baseline
        )


class Busy(OverheadLatency):
    """A machine busy throughout: every decision must clear the line by the busy margin
    (decision.BUSY_MARGIN), and reads its model where it is within +-0.5 %."""

    drift = 0.02

    def evaluate(self, model: nn.Module, tag: str) -> guided.Evaluation:
        from edgeprune.pipeline.decision import BUSY_MARGIN, OVER, UNDER, Decision

        self.calls += 1
        value, line = self.latency(model), self.budget.value * (1 - self.drift)
        low, high = value * 0.995, value * 1.005
        verdict = UNDER if high < line * (1 - BUSY_MARGIN) else OVER
        return guided.Evaluation(
            value, decision=Decision(verdict, value, low, high, line, 20, 15, 0.6, 10.0, False, BUSY_MARGIN)
        )


@pytest.mark.parametrize("fraction", [0.7, 0.5])
def test_on_a_busy_machine_the_window_moves_down_by_the_busy_margin(resnet20: nn.Module, fraction: float) -> None:
    """Decisions that must clear the line by 3 % can put nothing in [0.95, 0.98] of the budget:
    the window moves down whole, and the search stops in it rather than running on."""
    from edgeprune.pipeline.decision import BUSY_MARGIN

    baseline = OverheadLatency(Budget("latency", 1.0)).latency(resnet20)
    objective = Busy(Budget("latency", baseline * fraction))
    result = guided.Guided(resnet20, X, level_guide(resnet20, objective), objective, round_to=16, tol=0.05).run(
        baseline
    )
    budget, top = objective.budget.value, 0.98 * (1 - BUSY_MARGIN)
    assert budget * (top - 0.03) <= result.evaluation.value <= budget * top, result.stop_reason
    assert result.stop_reason.startswith("within tolerance (at most 8% under budget, lowered by the busy margin)")
    assert sum(s.scalar != "confirm" for s in result.steps) <= 6


def test_earlier_readings_start_the_bracket_and_are_never_the_result(resnet20: nn.Module) -> None:
    """An int8-like target (fixed costs: the unpruned model reads 0.53 of the float32 baseline
    against a 0.5 budget): started from the float32 baseline's reading, the first candidate is aimed
    at half the FLOPs; started from int8 of the unpruned model and of a float32 plan, the search
    lands in the window in fewer candidates, and the plan read before is not what it returns."""
    baseline = OverheadLatency(Budget("latency", 1.0)).latency(resnet20)
    full = OverheadLatency(Budget("latency", 1.0), overhead_ms=0.0, ms_per_mflop=1.0).latency(resnet20)
    # 0.2 of the baseline fixed, the rest in proportion to FLOPs: 0.53 of it unpruned
    ms_per_mflop = 0.33 * baseline / full

    def target() -> OverheadLatency:
        return OverheadLatency(Budget("latency", 0.5 * baseline), 0.2 * baseline, ms_per_mflop)

    cold_obj, warm_obj = target(), target()
    guide = level_guide(resnet20, cold_obj)
    cold = guided.Guided(resnet20, X, guide, cold_obj, round_to=16, tol=0.05).run(baseline)
    fp32_plan = guide.levels.plan(0.6)
    probe = OverheadLatency(Budget("latency", 1.0), 0.2 * baseline, ms_per_mflop)
    prior = [
        (guide.levels.plan(0.0), probe.latency(resnet20), False),
        (fp32_plan, probe.latency(apply(copy.deepcopy(resnet20), fp32_plan, X)), True),
    ]
    assert prior[0][1] == pytest.approx(0.53 * baseline) and prior[1][1] < 0.5 * baseline
    warm = guided.Guided(resnet20, X, guide, warm_obj, round_to=16, tol=0.05, prior=prior).run(baseline)
    budget = 0.5 * baseline
    assert budget * 0.95 <= warm.evaluation.value <= budget, warm.stop_reason
    assert cold.evaluation.value <= budget and warm_obj.calls < cold_obj.calls, (warm_obj.calls, cold_obj.calls)
    assert widths_key(warm.plan) != widths_key(fp32_plan)
