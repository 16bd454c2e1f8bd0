"""Budget text -> Budget: every accepted form, relative resolution, and one-line errors."""

from __future__ import annotations

import dataclasses

import pytest

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.budget import Budget, parse_budget


@pytest.mark.parametrize(
    ("text", "metric", "value", "relative", "statistic"),
    [
        ("20ms", "latency", 20.0, False, "median"),
        ("0.02s", "latency", 20.0, False, "median"),
        ("500us", "latency", 0.5, False, "median"),
        ("p90<=20ms", "latency", 20.0, False, "p90"),
        ("2x", "latency", 0.5, True, "median"),
        ("50%", "latency", 0.5, True, "median"),
        ("300MFLOPs", "flops", 300e6, False, "median"),
        ("1.2GFLOPs", "flops", 1.2e9, False, "median"),
        ("1.5Mparams", "params", 1.5e6, False, "median"),
        ("2M params", "params", 2e6, False, "median"),
    ],
)
def test_parse_accepted_forms(text: str, metric: str, value: float, relative: bool, statistic: str) -> None:
    b = parse_budget(text)
    assert b.metric == metric
    assert b.value == pytest.approx(value)
    assert b.relative is relative
    assert b.statistic == statistic
    assert b.fraction is None
    assert b.text == text
    assert "\n" not in b.describe()


def test_latency_flag_only_for_latency() -> None:
    assert parse_budget("20ms").is_latency
    assert parse_budget("2x").is_latency
    assert not parse_budget("300MFLOPs").is_latency
    assert not parse_budget("1.5Mparams").is_latency


@pytest.mark.parametrize(("text", "fraction"), [("50%", 0.5), ("2x", 0.5), ("4x", 0.25), ("75%", 0.75)])
def test_resolve_relative_sets_value_and_fraction(text: str, fraction: float) -> None:
    b = parse_budget(text)
    with pytest.raises(ValueError, match="relative budget"):
        b.met_by(1.0)  # a relative budget cannot judge a figure before it is resolved
    r = b.resolve(8.0)
    assert not r.relative
    assert r.metric == "latency"
    assert r.fraction == pytest.approx(fraction)
    assert r.value == pytest.approx(8.0 * fraction)
    assert r.statistic == b.statistic
    assert f"{fraction:.0%} of baseline" in r.describe()
    # the unresolved budget is unchanged (frozen dataclass, resolve returns a copy)
    assert b.relative and b.value == pytest.approx(fraction)


def test_resolve_absolute_is_identity() -> None:
    b = parse_budget("20ms")
    assert b.resolve(100.0) is b
    assert b.fraction is None


def test_met_by_is_inclusive() -> None:
    b = parse_budget("20ms")
    assert b.met_by(19.9)
    assert b.met_by(20.0)
    assert not b.met_by(20.01)
    p = parse_budget("1.5Mparams")
    assert p.met_by(1_500_000)
    assert not p.met_by(1_500_001)
    r = parse_budget("50%").resolve(10.0)
    assert r.met_by(5.0)
    assert not r.met_by(5.1)


def test_budget_is_hashable_and_frozen() -> None:
    b = parse_budget("20ms")
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.value = 1.0  # type: ignore[misc]
    assert isinstance(b, Budget)


@pytest.mark.parametrize("text", ["fast", "0ms", "1x", "0.5x", "150%", "0%", "-3ms", "", "20", "ms", "0MFLOPs"])
def test_bad_budget_is_one_line_edgeprune_error(text: str) -> None:
    with pytest.raises(EdgepruneError) as info:
        parse_budget(text)
    msg = str(info.value)
    assert msg and "\n" not in msg
    assert repr(text.strip()) in msg or repr(text) in msg  # the message quotes what the user typed
