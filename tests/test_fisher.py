"""The estimated sensitivity map (search/_fisher.py): Fisher estimates of every group's drop from a
few backward passes, calibrated on a few measured groups, so the trials stop growing with the model."""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.pipeline.methods import get_method
from edgeprune.pipeline.prune import space as space_mod
from edgeprune.pipeline.prune.space import discover
from edgeprune.pipeline.search import _fisher, sensitivity
from tests.tiny_models import tiny_resnet

X = (torch.randn(1, 3, 32, 32),)


class Lanes(nn.Module):
    """Six parallel conv lanes summed into one head, lane i's head scaled by 2^i (from 0.2, so the
    softmax is not saturated): cutting a lane's channels costs more the higher i, an order both maps
    must find."""

    def __init__(self) -> None:
        super().__init__()
        self.lanes = nn.ModuleList(nn.Conv2d(3, 16, 3, padding=1) for _ in range(6))
        self.heads = nn.ModuleList(nn.Linear(16, 10) for _ in range(6))
        with torch.no_grad():
            for i, head in enumerate(self.heads):
                head.weight.mul_(0.2 * 2.0**i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(
            (h(torch.relu(lane(x)).mean((2, 3))) for lane, h in zip(self.lanes, self.heads)),
            torch.zeros(x.shape[0], 10),
        )


def _setup(model: nn.Module) -> tuple[nn.Module, space_mod.PruningSpace, space_mod.Scores, torch.Tensor]:
    torch.manual_seed(0)
    model = model.eval()
    space = discover(model, X)
    return model, space, get_method("l1").scores(model, space, X), torch.randn(64, 3, 32, 32)


def test_estimates_order_the_groups_as_the_measurements_do() -> None:
    model, space, scores, calib = _setup(Lanes())
    widths = {g.id: sensitivity.candidate_widths(g, 4) for g in space.groups}
    removed = {g.id: {w: sensitivity._removed_units(g, scores, w) for w in widths[g.id]} for g in space.groups}
    est = _fisher.estimates(model, space, X, calib, widths, removed)
    measured = sensitivity.sensitivity(model, space, scores, X, calib, round_to=4, estimate_above=None)
    by_estimate = sorted(est, key=lambda g: est[g][4])
    assert by_estimate == sorted(measured, key=lambda g: measured[g][4]) == [f"lanes.{i}" for i in range(6)]
    for g in est:  # nothing removed costs nothing (the map makes the rest non-increasing in width)
        assert est[g][16] == 0.0 and est[g][4] > 0


def test_a_model_of_many_groups_measures_only_the_calibration_groups(monkeypatch) -> None:
    """Above `estimate_above` groups, only CALIBRATION_GROUPS groups are cut and scored (each at its
    measured widths) and keep their measured drops; the others are estimated, on the same scale."""
    model, space, scores, calib = _setup(tiny_resnet())
    assert len(space.groups) > 3
    cut: list[str] = []
    real = sensitivity.pruned_copy

    def counting(model: nn.Module, *changes: object) -> nn.Module:
        cut.append("trial")
        return real(model, *changes)

    monkeypatch.setattr(sensitivity, "pruned_copy", counting)
    measured = sensitivity.sensitivity(model, space, scores, X, calib, round_to=4, estimate_above=None)
    every_trial = len(cut)
    cut.clear()
    monkeypatch.setattr(sensitivity, "CALIBRATION_GROUPS", 3)
    estimated = sensitivity.sensitivity(model, space, scores, X, calib, round_to=4, estimate_above=3)
    per_group = {
        g.id: len(sensitivity.measured_widths(sensitivity.candidate_widths(g, 4)[:-1], sensitivity.MEASURED))
        for g in space.groups
    }
    assert len(cut) < every_trial and len(cut) <= 3 * max(per_group.values())
    same = [g for g in measured if measured[g] == estimated[g]]
    assert len(same) >= 3  # the calibration groups: measured, figures unchanged
    for g, drops in estimated.items():
        assert set(drops) == set(measured[g]) and drops[max(drops)] == 0.0
        assert all(drops[a] >= drops[b] for a, b in zip(sorted(drops), sorted(drops)[1:]))
    # on the measurements' scale: each estimated narrowest drop within two orders of the measured
    for g in set(measured) - set(same):
        narrow = min(measured[g])
        assert measured[g][narrow] / 100 < estimated[g][narrow] < measured[g][narrow] * 100, g
