"""Each pruning method does its own job on small constructed cases."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.data import load_data
from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.methods import get_method
from edgeprune.pipeline.prune.select import plan_at_level
from edgeprune.pipeline.prune.space import discover
from tests.synthetic import learnable_npz

IMAGE = (torch.randn(1, 3, 16, 16),)


class PlainNet(nn.Module):
    """conv-BN-ReLU x2 (16 and 32 channels), pooled, classified: the VGG-style net Slimming targets."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    return load_data(str(learnable_npz(tmp_path_factory.mktemp("d") / "d.npz", n_train=128, n_test=48)), batch_size=32)


def test_slimming_sparsity_drives_a_dead_channels_scale_to_zero(data) -> None:
    torch.manual_seed(0)
    model = PlainNet()
    with torch.no_grad():
        model.c2.weight[7] = 0  # channel 7 of c2 is dead: its BN scale gets no task gradient
    space = discover(model.eval(), IMAGE)
    method = get_method("slimming", lam=0.1, steps=60, lr=0.1)
    prepared = method.prepare(copy.deepcopy(model), space, IMAGE, data)
    gamma = prepared.b2.weight.detach().abs()
    assert gamma[7] < 0.05 * model.b2.weight.detach().abs()[7]  # L1 alone pulled it to ~0
    assert gamma[7] < 0.2 * gamma.median()
    scores = method.scores(prepared, space, IMAGE, data)
    assert scores["c2"][7] <= np.quantile(scores["c2"], 0.25)  # among the first to go
    plan = plan_at_level(space, scores, 0.25, round_to=1, ranking="global")
    assert 7 in plan.groups["c2"].removed


def test_slimming_without_sparsity_leaves_scales_alone(data) -> None:
    """The control: lambda 0 does not shrink the scales, so the shrinking above is the penalty's doing."""
    torch.manual_seed(0)
    model = PlainNet()
    space = discover(model.eval(), IMAGE)
    sparse = get_method("slimming", lam=0.05, steps=40, lr=0.1).prepare(copy.deepcopy(model), space, IMAGE, data)
    dense = get_method("slimming", lam=0.0, steps=40, lr=0.1).prepare(copy.deepcopy(model), space, IMAGE, data)
    assert sparse.b2.weight.abs().sum() < 0.5 * dense.b2.weight.abs().sum()


def test_global_ranking_discovers_per_layer_widths() -> None:
    model = PlainNet().eval()
    space = discover(model, IMAGE)
    with torch.no_grad():  # every c1 channel matters more than any c2 channel
        model.b1.weight.fill_(1.0)
        model.b2.weight.copy_(torch.linspace(0.01, 0.5, 32))
    scores = get_method("slimming").scores(model, space, IMAGE)
    plan = plan_at_level(space, scores, 0.5, round_to=1, ranking="global")
    assert len(plan.groups["c1"].keep) == 16  # untouched
    assert len(plan.groups["c2"].keep) == 32 - 24  # 24 of the 48 units removed, all from c2
    assert plan.groups["c2"].keep == tuple(range(24, 32))  # the largest scales


def test_slimming_refuses_a_model_without_batchnorm(data) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    space = discover(model.eval(), IMAGE)
    with pytest.raises(EdgepruneError, match="no BatchNorm.*--method l1"):
        get_method("slimming", steps=1).prepare(model, space, IMAGE, data)


def test_pruned_slimming_model_applies_physically(data) -> None:
    model = PlainNet().eval()
    space = discover(model, IMAGE)
    scores = get_method("slimming").scores(model, space, IMAGE)
    plan = plan_at_level(space, scores, 0.5, round_to=4, ranking="global")
    pruned = apply(copy.deepcopy(model), plan, IMAGE)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert pruned(*IMAGE).shape == (1, 3)
