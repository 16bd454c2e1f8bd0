"""Whole-block removal: which blocks qualify, physical removal in PyTorch and ONNX, importance."""

from __future__ import annotations

import copy
import json
from pathlib import Path

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
from tests.test_cli import run_cli

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
    bypassed = bypass(copy.deepcopy(model), ["layer1.1"], X)
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


def test_depth_auto_removes_blocks_where_channels_alone_cannot_reach(tmp_path: Path) -> None:
    """ResNet-20's narrowest channel plan keeps 8,062 parameters; 5,000 needs whole blocks gone. The
    default (--depth auto) searches channels, finds them short, and searches again with blocks,
    scored on the example inputs (no --data); --depth off refuses in one line that names the way."""
    torch.save(create("resnet20").eval(), tmp_path / "r20.pt")
    args = [tmp_path / "r20.pt", "--budget", "5000params", "--input-shape", "1x3x32x32"]
    rc, _, err = run_cli([*args, "--out", tmp_path / "auto"])
    assert rc == 0, err
    assert "channels alone cannot reach the budget" in err and "scored on the example inputs (no --data)" in err
    rep = json.loads((tmp_path / "auto" / "report.json").read_text())
    assert rep["search"]["depth"].startswith("on (--depth auto: channels alone cannot reach the budget")
    plan = json.loads((tmp_path / "auto" / "plan.json").read_text())
    assert plan["removed_blocks"] and rep["final"]["params"] <= 5000
    rc, _, err = run_cli([*args, "--depth", "off", "--out", tmp_path / "off"])
    line = err.strip().splitlines()[-1]
    assert rc == 2 and "infeasible" in line and "--depth auto (the default) or on" in line
    # a budget channels reach keeps every block, and says so
    rc, _, err = run_cli(
        [tmp_path / "r20.pt", "--budget", "130000params", "--input-shape", "1x3x32x32", "--out", tmp_path / "w"]
    )
    rep = json.loads((tmp_path / "w" / "report.json").read_text())
    assert rc == 0 and rep["search"]["depth"].startswith("off (--depth auto: channels alone reached")
    assert not json.loads((tmp_path / "w" / "plan.json").read_text())["removed_blocks"]


class _MaskedLayer(torch.nn.Module):
    """A transformer-like layer as Hugging Face writes them (DeBERTa, Swin): a required mask argument
    and a tuple (hidden states, attention weights) returned, which its encoder unpacks."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x + self.fc(x) * mask, None


class _MaskedEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(_MaskedLayer() for _ in range(3))
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(x)
        for layer in self.layers:
            x, _weights = layer(x, mask)
        return self.head(x)


def test_a_layer_that_takes_a_mask_and_returns_a_tuple_is_a_block() -> None:
    """Such a layer is found (re-run alone with the mask it was given) and its bypass returns what the
    encoder unpacks: the model without it computes what it computes with that layer's branch at zero."""
    torch.manual_seed(0)
    model, x = _MaskedEncoder().eval(), (torch.randn(2, 5, 8),)
    found = find_blocks(model, x)
    assert [(b.name, b.returns) for b in found] == [("layers.0", 2), ("layers.1", 2), ("layers.2", 2)]
    silenced = copy.deepcopy(model)
    with torch.no_grad():
        silenced.layers[1].fc.weight.zero_()
        silenced.layers[1].fc.bias.zero_()
    pruned = apply(copy.deepcopy(model), Plan({}, removed_blocks=("layers.1",)), x)
    assert not any(p.shape == (8, 8) for n, p in pruned.named_parameters() if n.startswith("layers.1"))
    torch.testing.assert_close(pruned(*x), silenced(*x))
