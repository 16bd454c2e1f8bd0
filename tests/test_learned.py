"""The learned methods do their own jobs: Pruning from Scratch's gates, TAS's width/depth search."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeprune.exporters import OnnxExporter
from edgeprune.pipeline.budget import parse_budget
from edgeprune.pipeline.counting import count
from edgeprune.pipeline.learned.tas import block_runs, channel_interpolate
from edgeprune.pipeline.methods import Goal, get_method
from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.blocks import find_blocks
from edgeprune.pipeline.prune.select import plan_at_level
from edgeprune.pipeline.prune.space import discover
from edgeprune.pipeline.search.level_search import LevelSearch
from edgeprune.pipeline.search.objective import CountObjective
from tests.synthetic import learnable_npz
from tests.test_cli import assert_one_line_error, run_cli
from tests.tiny_models import tiny_resnet

IMAGE = (torch.randn(1, 3, 16, 16),)
IMAGE32 = (torch.randn(1, 3, 32, 32),)


class Planted(nn.Module):
    """1x1 conv (8 channels) -> BN -> ReLU -> pool -> fc on a red-vs-green task. Channel 0 computes
    red minus green, the one thing that decides the class, and the fc reads it as such; channels
    1-7 see only the (uninformative) blue plane and the fc maps them to random logits: noise,
    unless gated off."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, :2] = torch.tensor([1.0, -1.0]).view(2, 1, 1)
            self.conv.weight[1:, 2] = torch.randn(7, 1, 1)
            self.fc.weight[:, 0] = torch.tensor([2.0, -2.0])
            self.fc.weight[:, 1:] = 2 * torch.randn(2, 7)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


# ------------------------------------------------------------------------------ pruning from scratch


def test_pfs_gates_separate_planted_useful_channels_from_noise(data16) -> None:
    torch.manual_seed(0)
    model = Planted()
    weights = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("weight")}
    space = discover(model.eval(), IMAGE)
    method = get_method("pfs", lam=0.5, steps=60, lr=1.0)
    method.prepare(model, space, IMAGE, data16)
    gates = method.scores(model, space, IMAGE, data16)["conv"]
    assert gates[0] == gates.max(), gates  # the useful channel ranks first
    # and almost all noise is gated off (one noisy channel may survive: its pooled output is nearly
    # constant, so its gate serves as the frozen classifier's missing bias)
    assert (gates[1:] < 0.01 * gates[0]).sum() >= 5, gates
    for k, v in weights.items():  # the weights stayed frozen (only the gates learned)
        assert torch.equal(model.state_dict()[k], v), k
    assert all(p.requires_grad for p in model.parameters())  # and are trainable again afterwards
    plan = plan_at_level(space, {"conv": gates}, 7 / 8, round_to=1, ranking="global")
    assert plan.groups["conv"].keep == (0,)


def test_pfs_without_sparsity_keeps_noise_gates_higher(data16) -> None:
    """The control for the test above: with lambda 0 only the task loss acts on the gates, so the
    L1 term is what drives the noisy ones furthest down."""
    torch.manual_seed(0)
    model = Planted()
    space = discover(model.eval(), IMAGE)
    noisy = {}
    for lam in (0.0, 0.5):
        m = get_method("pfs", lam=lam, steps=60, lr=1.0)
        m.prepare(copy.deepcopy(model), space, IMAGE, data16)
        noisy[lam] = float(np.mean(m.scores(model, space, IMAGE, data16)["conv"][1:]))
    assert noisy[0.5] < 0.7 * noisy[0.0], noisy


def test_pfs_threshold_search_meets_a_flops_budget(data32) -> None:
    """The binary search on the global gate threshold returns a configuration within the budget."""
    torch.manual_seed(0)
    model = tiny_resnet().eval()
    space = discover(model, IMAGE32)
    method = get_method("pfs", steps=4)
    method.prepare(model, space, IMAGE32, data32)
    scores = method.scores(model, space, IMAGE32, data32)
    base = count(model, IMAGE32).flops
    budget = parse_budget(f"{0.45 * base / 1e6:.4f}MFLOPs")
    search = LevelSearch(
        model,
        IMAGE32,
        space,
        scores,
        CountObjective(budget, IMAGE32),
        round_to=4,
        method="pfs",
        tol=0.1,
        ranking="global",
    )
    result = search.run(base)
    pruned = apply(copy.deepcopy(model), result.plan, IMAGE32)
    assert count(pruned, IMAGE32).flops <= budget.value
    assert result.evaluation.value == count(pruned, IMAGE32).flops


def test_pfs_from_random_weights_end_to_end(tmp_path: Path) -> None:
    """`compress --arch A --method pfs --data D` with no model file: learned, pruned, trained from scratch."""
    npz = learnable_npz(tmp_path / "d.npz", n_train=64, n_test=32, size=32, classes=10)
    base = count(tiny_resnet(), IMAGE32).flops
    out = tmp_path / "out"
    rc, _stdout, err = run_cli(
        [
            "--arch",
            "tests.tiny_models:tiny_resnet",
            "--method",
            "pfs",
            "--data",
            npz,
            "--budget",
            f"{0.6 * base / 1e6:.3f}MFLOPs",
            "--search-steps",
            "3",
            "--steps",
            "2",
            "--batch-size",
            "16",
            "--round-to",
            "4",
            "--warmup",
            "1",
            "--repeats",
            "3",
            "--out",
            out,
        ]
    )
    assert rc == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert "random initialization" in rep["model"]["source"]
    assert rep["recovery"]["method"] == "scratch"  # the paper's: the pruned shape is trained from scratch
    assert rep["final"]["flops"] <= 0.6 * base
    assert rep["budget"]["met"]


def test_no_model_is_refused_for_methods_that_need_a_trained_one(tmp_path: Path) -> None:
    line = assert_one_line_error(
        *run_cli(["--arch", "resnet20", "--method", "l1", "--budget", "50%", "--out", tmp_path])[::2]
    )
    assert "pfs" in line and "trained model" in line
    npz = learnable_npz(tmp_path / "d.npz", n_train=8, n_test=4, size=32, classes=10)
    line = assert_one_line_error(
        *run_cli(
            [
                "--arch",
                "resnet20",
                "--method",
                "pfs",
                "--data",
                npz,
                "--recover",
                "distill",
                "--budget",
                "50%",
                "--out",
                tmp_path / "o",
            ]
        )[::2]
    )
    assert "teacher" in line


# ---------------------------------------------------------------------------------------------- TAS


def test_channel_interpolation_resizes_the_channel_axis() -> None:
    x = torch.arange(4.0).view(1, 4, 1, 1).expand(2, 4, 3, 3)
    assert torch.equal(channel_interpolate(x, 4, 1), x)  # full width: unchanged
    up = channel_interpolate(x[:, :2], 4, 1)
    assert up.shape == (2, 4, 3, 3)
    assert up[0, :, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]  # each kept channel spread over its share
    y = torch.randn(5, 7, 6)  # a Linear's (batch, tokens, features) output, channels last
    assert channel_interpolate(y[..., :3], 6, -1).shape == (5, 7, 6)


def test_block_runs_group_neighbours_and_keep_a_whole_stage_alive() -> None:
    from edgeprune.models import create

    model = create("resnet20").eval()
    runs = block_runs(model, find_blocks(model, IMAGE32))
    assert [r.blocks for r in runs] == [
        ["layer1.0", "layer1.1", "layer1.2"],
        ["layer2.1", "layer2.2"],
        ["layer3.1", "layer3.2"],
    ]
    assert runs[0].choices == [1, 2, 3]  # layer1 is all removable: keep at least one block
    assert runs[1].choices == [0, 1, 2]  # layer2.0 (the downsampling block) always stays


@pytest.fixture(scope="module")
def tas_result(data32):
    torch.manual_seed(0)
    from edgeprune.models import create

    model = create("resnet20", num_classes=10).eval()
    space = discover(model, IMAGE32)
    method = get_method("tas", steps=40, arch_lr=0.1, round_to=16)
    method.prepare(model, space, IMAGE32, data32, Goal(cost_fraction=0.4, depth="on"))
    return model, space, method


def test_tas_expected_cost_moves_to_the_budget(tas_result) -> None:
    _, _, method = tas_result
    history = method.result["history"]
    start, end = history[0]["expected_flops"], history[-1]["expected_flops"]
    assert start > 0.6  # the search starts wide (the prior favours wide candidates)
    assert abs(end - 0.4) < 0.5 * abs(start - 0.4), history  # and its expected cost closed on the target
    assert abs(method.result["argmax_flops"] / count(tas_result[0], IMAGE32).flops - 0.4) < 0.2


def test_tas_scores_reproduce_the_searched_architecture_and_it_exports(tas_result, tmp_path: Path) -> None:
    model, space, method = tas_result
    scores = method.scores(model, space, IMAGE32)
    blocks = method.block_scores(model, find_blocks(model, IMAGE32), None)
    widths = method.result["widths"]
    level = sum(g.size - widths[g.id] for g in space.groups) / sum(g.size for g in space.groups)
    plan = plan_at_level(space, scores, level, 16, "tas", "global", "on", blocks, blocks_by_threshold=True)
    assert {gid: len(g.keep) for gid, g in plan.groups.items()} == widths
    removed = {b for run in method.result["runs"] for b in run["blocks"][run["keep"] :]}
    assert set(plan.removed_blocks) == removed
    for gid, g in plan.groups.items():  # the first (strongest by L1) channels are the ones kept
        assert set(g.keep) == set(method.result["order"][gid][: widths[gid]])
    pruned = apply(copy.deepcopy(model), plan, IMAGE32)
    art = OnnxExporter().export(pruned, IMAGE32, tmp_path / "tas.onnx")
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(art.path)).graph.node)
    original = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert removed and convs == original - 2 * len(removed)  # each removed block's two convs are gone
    assert count(pruned, IMAGE32).flops < count(model, IMAGE32).flops


def test_tas_resumes_its_search_from_the_run_directory(tmp_path: Path) -> None:
    """What TAS learned (widths, depths) lives in the prepare stage's JSON: a re-run reloads it
    instead of searching again, and ends with the same plan."""
    from edgeprune.pipeline.compress import Settings, compress
    from edgeprune.pipeline.loading import from_module

    npz = learnable_npz(tmp_path / "d.npz", n_train=32, n_test=16, size=32, classes=10)
    settings = Settings(
        budget=f"{0.6 * count(tiny_resnet(), IMAGE32).flops / 1e6:.3f}MFLOPs",
        method="tas",
        data=str(npz),
        recover="none",
        round_to=4,
        batch_size=16,
        method_options={"steps": 2, "round_to": 4},
    )
    runs = []
    for _ in range(2):
        lines: list[str] = []
        result = compress(from_module(tiny_resnet(), IMAGE32), settings, tmp_path / "out", lines.append)
        runs.append((lines, result.plan.to_dict()["groups"]))
    assert not any("resumed" in line for line in runs[0][0] if line.startswith("[prepare]"))
    assert any(line.startswith("[prepare] resumed") for line in runs[1][0])
    assert runs[0][1] == runs[1][1]
