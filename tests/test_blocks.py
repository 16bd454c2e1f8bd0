"""Whole-block removal: which blocks qualify, physical removal in PyTorch and ONNX, importance."""

from __future__ import annotations

import copy

import torch

from edgeprune.exporters import OnnxExporter
from edgeprune.models import create
from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.blocks import block_scores, bypass, find_blocks
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.select import blocks_at_level, plan_at_level, widths_key
from edgeprune.pipeline.prune.space import discover
from edgeprune.pipeline.search.cost_model import CostModel
from tests import coupling_models as cm

X = (torch.randn(1, 3, 32, 32),)


def test_only_shape_preserving_residual_blocks_qualify() -> None:
    names = [b.name for b in find_blocks(create("resnet20").eval(), X)]
    # stride-2 first blocks of stages 2 and 3 change the shape; every other BasicBlock qualifies
    assert names == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    assert find_blocks(create("vgg16").eval(), X) == []  # plain conv layers are not residual
    mbv2 = [b.name for b in find_blocks(create("mobilenetv2").eval(), X)]
    assert "features.3" in mbv2 and not any(n.startswith("features.3.") for n in mbv2)  # outermost only


def test_removed_block_leaves_the_module_and_the_onnx_graph(tmp_path) -> None:
    model = create("resnet20").eval()
    plan = Plan({}, removed_blocks=("layer1.1", "layer3.2"))
    pruned = apply(copy.deepcopy(model), plan, X)
    assert isinstance(pruned.layer1[1], torch.nn.Identity) and isinstance(pruned.layer3[2], torch.nn.Identity)
    assert pruned(*X).shape == (1, 10)
    exporter = OnnxExporter()
    full = exporter.export(model, X, tmp_path / "full.onnx")
    small = exporter.export(pruned, X, tmp_path / "small.onnx")
    import onnx

    def convs(path) -> int:
        return sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)

    assert convs(full.path) - convs(small.path) == 4  # two convs per BasicBlock
    assert exporter.check(small, pruned, X) < 1e-3


def test_bypass_equals_the_identity_branch_for_a_zeroed_block() -> None:
    """A residual block whose residual branch outputs zero computes relu(x); bypassing it gives x,
    which is the same after the block's ReLU input is non-negative (it follows a ReLU)."""
    model = create("resnet20").eval()
    with torch.no_grad():
        model.layer1[1].bn2.weight.zero_()
        model.layer1[1].bn2.bias.zero_()
    bypassed = bypass(copy.deepcopy(model), ["layer1.1"])
    torch.testing.assert_close(bypassed(*X), model(*X), rtol=1e-5, atol=1e-5)


def test_block_importance_ranks_a_silenced_block_last() -> None:
    torch.manual_seed(0)
    model = create("resnet20").eval()
    with torch.no_grad():
        model.layer2[1].bn2.weight.zero_()
        model.layer2[1].bn2.bias.zero_()
    scores = block_scores(model, find_blocks(model, X), torch.randn(8, 3, 32, 32))
    assert min(scores, key=scores.get) == "layer2.1" and scores["layer2.1"] < 1e-10
    assert blocks_at_level(scores, 1 / 7) == ("layer2.1",)


def test_depth_enters_the_plan_and_the_cost_model() -> None:
    model = create("resnet20").eval()
    space = discover(model, X)
    from edgeprune.pipeline.methods import get_method

    scores = get_method("l1").scores(model, space, X)
    blocks = {b.name: float(i) for i, b in enumerate(find_blocks(model, X))}
    cost = CostModel(model, space, X)
    only = plan_at_level(space, scores, 3 / 7, 16, depth="only", block_scores=blocks)
    assert only.removed_blocks == ("layer1.0", "layer1.1", "layer1.2")
    assert all(len(g.keep) == g.size for g in only.groups.values())  # depth only: no channel pruned
    assert cost.flops(only) < cost.total * 0.7
    both = plan_at_level(space, scores, 3 / 7, 16, depth="on", block_scores=blocks)
    assert both.removed_blocks == only.removed_blocks and widths_key(both) != widths_key(only)
    pruned = apply(copy.deepcopy(model), both, X)
    assert pruned(*X).shape == (1, 10)


def test_no_blocks_in_a_model_without_residual_blocks() -> None:
    assert find_blocks(cm.Concat().eval(), (torch.randn(*cm.IMAGE),)) == []
