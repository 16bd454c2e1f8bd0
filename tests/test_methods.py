"""Each pruning method does its own job on small constructed cases."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.data import load_data
from edgeprune.pipeline.methods import get_method
from edgeprune.pipeline.prune.apply import apply
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
    with pytest.raises(EdgepruneError, match=r"no BatchNorm.*--method l1"):
        get_method("slimming", steps=1).prepare(model, space, IMAGE, data)


def test_pruned_slimming_model_applies_physically(data) -> None:
    model = PlainNet().eval()
    space = discover(model, IMAGE)
    scores = get_method("slimming").scores(model, space, IMAGE)
    plan = plan_at_level(space, scores, 0.5, round_to=4, ranking="global")
    pruned = apply(copy.deepcopy(model), plan, IMAGE)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert pruned(*IMAGE).shape == (1, 3)


class TwoConv(nn.Module):
    """c1 -> ReLU -> c2 -> pool -> fc, with c1's filter norms made misleading: a channel's filter
    norm is scaled by s_c while c2 reads it with weight r_c / s_c, so what a channel contributes to
    c2 (which ThiNet and LASSO measure) is unrelated to its L1 norm."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 16, 3, padding=1)
        self.fc = nn.Linear(16, 3)
        s = torch.rand(32, generator=g) * 4 + 0.25
        r = torch.rand(32, generator=g) ** 3 * 4  # a few channels matter a lot, most little
        with torch.no_grad():
            self.c1.weight.mul_(s.view(-1, 1, 1, 1))
            self.c1.bias.mul_(s)
            self.c2.weight.mul_((r / s).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(torch.relu(self.c1(x))).mean((2, 3)))


def _c2_error(model: nn.Module, pruned: nn.Module, images: torch.Tensor) -> float:
    def c2_out(net: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return net.c2(torch.relu(net.c1(images)))

    return float(((c2_out(pruned) - c2_out(model)) ** 2).mean())


@pytest.fixture(scope="module")
def calib_data(tmp_path_factory: pytest.TempPathFactory):
    return load_data(
        str(learnable_npz(tmp_path_factory.mktemp("c") / "c.npz", n_train=128, n_test=16, size=16)), batch_size=32
    )


@pytest.mark.parametrize("name", ["thinet", "lasso"])
def test_reconstruction_methods_beat_l1_and_random_at_the_same_width(name: str, calib_data) -> None:
    model = TwoConv().eval()
    space = discover(model, IMAGE)
    space.groups = [g for g in space.groups if g.id == "c1"]  # only c1's channels: c2 is the layer judged
    held_out = calib_data.calibration(64, seed=99)  # images the method did not calibrate on
    method = get_method(name, calibration_images=64, samples=2048)
    plan = plan_at_level(space, method.scores(model, space, IMAGE, calib_data), 0.5, round_to=1)
    ours = apply(copy.deepcopy(model), plan, IMAGE)
    before = _c2_error(model, ours, held_out)
    method.reconstruct(model, ours, space, plan, IMAGE, calib_data)
    err = _c2_error(model, ours, held_out)
    assert err < before  # the least-squares step helps on held-out images

    l1_plan = plan_at_level(space, get_method("l1").scores(model, space, IMAGE), 0.5, round_to=1)
    err_l1 = _c2_error(model, apply(copy.deepcopy(model), l1_plan, IMAGE), held_out)
    rng = np.random.default_rng(0)
    random_scores = {g.id: rng.random(g.size) for g in space.groups}
    err_random = _c2_error(
        model, apply(copy.deepcopy(model), plan_at_level(space, random_scores, 0.5, round_to=1), IMAGE), held_out
    )
    assert len(plan.groups["c1"].keep) == len(l1_plan.groups["c1"].keep) == 16
    assert err < 0.5 * err_l1 and err < 0.5 * err_random


def test_thinet_greedy_order_removes_the_silent_channel_first() -> None:
    from edgeprune.pipeline.prune.methods.thinet import greedy_removal_order

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) * np.array([1.0, 2.0, 0.01, 3.0, 0.5, 1.5])
    order = greedy_removal_order(x)
    assert order[0] == 2 and order[1] == 4 and sorted(order) == list(range(6))


def test_lasso_path_ranks_channels_by_what_they_reconstruct() -> None:
    from edgeprune.pipeline.prune.methods.lasso import lasso_entry_lambdas

    rng = np.random.default_rng(0)
    z = rng.normal(size=(800, 5)) * np.array([0.05, 1.0, 3.0, 0.2, 2.0])
    entry = lasso_entry_lambdas(z, z.sum(1))
    assert list(np.argsort(-entry)) == [2, 4, 1, 3, 0]
