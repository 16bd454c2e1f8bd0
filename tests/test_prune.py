"""The pruning core: discovery, plans, physical removal, and that removal is numerically exact."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import edgeprune
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.methods import get_method
from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.plan import GroupKeep, Plan
from edgeprune.pipeline.prune.select import plan_at_level, width_step
from edgeprune.pipeline.prune.space import Group, PruningSpace, discover, silenced_outputs
from tests import coupling_models as cm


def _randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics, so that a wrongly mapped channel shows up in the outputs."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name", sorted(cm.CONV_MODELS))
def test_physical_pruning_is_exact_on_coupled_convnets(name: str) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(cm.CONV_MODELS[name]())
    x = (torch.randn(*cm.IMAGE),)
    space = discover(model, x)
    assert space.groups, "every coupling model has prunable groups"
    plan = plan_at_level(space, get_method("l1").scores(model, space, x), 0.5, round_to=8)
    pruned = apply(copy.deepcopy(model), plan, x)
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in pruned.parameters())
    assert n_after < 0.7 * n_before
    want = silenced_outputs(model, plan, x)[0]
    got = pruned(*x)
    assert got.shape == want.shape == (1, 10)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_chunk_halves_shrink_together_and_reach_the_right_consumers() -> None:
    """torch-pruning 1.6 maps a chunk's first half to the second consumer and vice versa, and lets one
    half shrink alone (the chunk then re-divides by count): the halves must pair up instead."""
    model, x = _randomize_bn(cm.SplitChunk()), (torch.randn(*cm.IMAGE),)
    space = discover(model, x)
    assert space.get("stem.0").size == 32  # channel i of each half is one unit
    pruned = edgeprune.prune(model, x, ratio=0.5, round_to=8)
    assert pruned.stem[0].out_channels == 2 * pruned.left[0].in_channels == 2 * pruned.right[0].in_channels < 64
    plan = plan_at_level(space, get_method("l1").scores(model, space, x), 0.5, round_to=8)
    torch.testing.assert_close(
        apply(copy.deepcopy(model), plan, x)(*x), silenced_outputs(model, plan, x)[0], rtol=1e-4, atol=1e-5
    )


def test_equal_segments_of_a_group_keep_equal_widths() -> None:
    chunked = Group("stem.0", "channels", 64, ("stem.0(out)",), ((0, 1),), (tuple(range(32)), tuple(range(32, 64))))
    space = PruningSpace([chunked], [])
    scores = {"stem.0": np.random.default_rng(0).random(64)}
    for level in (0.2, 0.4, 0.6, 0.8):
        kept = plan_at_level(space, scores, level, 8).groups["stem.0"].keep
        assert sum(k < 32 for k in kept) == sum(k >= 32 for k in kept)


def test_concat_keeps_channels_of_every_input() -> None:
    model, x = cm.Concat().eval(), (torch.randn(*cm.IMAGE),)
    space = discover(model, x)
    assert {"a.0", "b.0"} <= {g.id for g in space.groups}
    pruned = edgeprune.prune(model, x, ratio=0.9, round_to=8)
    assert pruned.a[0].out_channels >= 1 and pruned.b[0].out_channels >= 1
    assert pruned.mix[0].in_channels == pruned.a[0].out_channels + pruned.b[0].out_channels


def test_output_layer_is_left_whole_and_grouped_conv_shrinks_evenly() -> None:
    model, x = cm.Grouped().eval(), (torch.randn(*cm.IMAGE),)
    space = discover(model, x)
    reasons = {s.id: s.reason for s in space.skipped}
    assert "output layer" in reasons["fc"]
    assert space.get("stem.0").even_by == "grouped convolution g.0" and len(space.get("stem.0").segments) == 4
    pruned = edgeprune.prune(model, x, ratio=0.5, round_to=8)
    assert pruned.g[0].groups == 4 and pruned.g[0].in_channels == pruned.stem[0].out_channels == 16
    assert pruned.fc.out_features == 10


def test_user_marked_layers_stay_whole() -> None:
    model, x = cm.Residual().eval(), (torch.randn(*cm.IMAGE),)
    space = discover(model, x, unprunable=["b1.0.0"])
    assert any(s.reason.startswith("contains a layer marked unprunable") for s in space.skipped)
    assert all("b1.0.0(out)" not in g.members for g in space.groups)


def test_norm_layers_shrink_with_their_channels() -> None:
    model, x = cm.Norms().eval(), (torch.randn(*cm.IMAGE),)
    pruned = edgeprune.prune(model, x, ratio=0.5, round_to=8)
    assert pruned.gn.num_channels == pruned.c1.out_channels < 32
    assert pruned.ln.normalized_shape[0] == pruned.c2.out_channels < 32
    assert pruned(*x).shape == (1, 10)


def test_attention_heads_and_mlp_are_pruned_physically() -> None:
    torch.manual_seed(0)
    model, x = cm.TinyTransformer().eval(), (torch.randn(*cm.TOKENS),)
    space = discover(model, x)
    kinds = {g.id: g.kind for g in space.groups}
    assert kinds["attn:heads"] == "heads"
    assert "fc1" in kinds
    pruned = edgeprune.prune(model, x, ratio=0.5, round_to=8)
    assert pruned.attn.num_heads == 2
    assert pruned.attn.qkv.out_features == 3 * 2 * 8 and pruned.attn.proj.in_features == 16
    assert pruned.fc1.out_features < 128
    assert pruned(*x).shape == (1, 10)


def test_removing_a_head_equals_zeroing_its_projection() -> None:
    torch.manual_seed(0)
    model, x = cm.TinyTransformer().eval(), (torch.randn(*cm.TOKENS),)
    plan = Plan({"attn:heads": GroupKeep("heads", 4, (0, 2, 3))})
    pruned = apply(copy.deepcopy(model), plan, x)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.attn.proj.weight[:, 8:16] = 0
    torch.testing.assert_close(pruned(*x), reference(*x), rtol=1e-5, atol=1e-6)


def test_attention_that_ignores_num_heads_is_left_whole_by_the_probe() -> None:
    torch.manual_seed(0)
    model, x = cm.TinyTransformer(heads_from_config=True).eval(), (torch.randn(*cm.TOKENS),)
    space = discover(model, x)
    reasons = {s.id: s.reason for s in space.skipped}
    assert "changes what the model computes" in reasons["attn:heads"]
    pruned = edgeprune.prune(model, x, ratio=0.5, round_to=8)
    assert pruned.attn.num_heads == 4 and pruned(*x).shape == (1, 10)


def test_l1_ranks_a_dead_filter_last() -> None:
    model, x = cm.Residual().eval(), (torch.randn(*cm.IMAGE),)
    with torch.no_grad():
        model.b1[0][0].weight[5] = 0  # filter 5 of the first conv inside block 1
    space = discover(model, x)
    scores = get_method("l1").scores(model, space, x)
    assert int(np.argmin(scores["b1.0.0"])) == 5
    plan = plan_at_level(space, scores, 1 / 32, round_to=1)
    assert 5 in plan.groups["b1.0.0"].removed


def test_widths_stay_on_multiples_and_rounding_is_recorded() -> None:
    model, x = cm.Depthwise().eval(), (torch.randn(*cm.IMAGE),)
    space = discover(model, x)
    scores = get_method("l1").scores(model, space, x)
    for level in (0.1, 0.3, 0.55, 0.8):
        plan = plan_at_level(space, scores, level, round_to=16)
        for g in space.groups:
            kept, step = len(plan.groups[g.id].keep), width_step(g.size, g.kind, 16)
            assert kept % step == 0 or kept == g.size
            assert step <= kept <= g.size
            assert plan.meta["requested"][g.id] == pytest.approx(g.size * (1 - level), abs=0.01)
    assert (
        width_step(64, "channels", 16) == 16
        and width_step(32, "channels", 16) == 8
        and width_step(16, "channels", 16) == 4
    )


def test_plan_round_trips_through_json_and_rebuilds_the_same_model(tmp_path) -> None:
    torch.manual_seed(0)
    model, x = _randomize_bn(cm.Residual()), (torch.randn(*cm.IMAGE),)
    space = discover(model, x)
    plan = plan_at_level(space, get_method("l1").scores(model, space, x), 0.5, 8)
    plan.save(tmp_path / "plan.json")
    again = Plan.load(tmp_path / "plan.json")
    assert again.to_dict() == plan.to_dict()
    pruned = apply(copy.deepcopy(model), plan, x)
    rebuilt = apply(cm.Residual().eval(), again, x)
    rebuilt.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(rebuilt(*x), pruned(*x))


def test_plan_for_another_architecture_is_refused() -> None:
    x = (torch.randn(*cm.IMAGE),)
    plan = Plan({"stem.0": GroupKeep("channels", 48, tuple(range(24)))})
    with pytest.raises(EdgepruneError, match="expects 48 channels"):
        apply(cm.Residual().eval(), plan, x)
    with pytest.raises(EdgepruneError, match="does not have"):
        apply(cm.Residual().eval(), Plan({"nope": GroupKeep("channels", 4, (0,))}), x)


def test_plan_file_errors_are_one_line(tmp_path) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text("{not json")
    with pytest.raises(EdgepruneError) as err:
        Plan.load(bad)
    assert "\n" not in str(err.value)


def test_prune_api_rejects_a_bad_ratio() -> None:
    with pytest.raises(EdgepruneError, match="ratio"):
        edgeprune.prune(cm.Residual(), torch.randn(*cm.IMAGE), ratio=1.0)


class _SummedBranches(nn.Module):
    """Two conv branches pooled, classified and summed: the inner convs' outputs are freed before
    the model returns, so a Python id() of one of them can be reused by the returned tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(3, 32, 3, padding=1)
        self.ha, self.hb = nn.Linear(32, 10), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ha(torch.relu(self.a(x)).mean((2, 3))) + self.hb(torch.relu(self.b(x)).mean((2, 3)))


def test_inner_layers_are_not_mistaken_for_output_layers() -> None:
    space = discover(_SummedBranches().eval(), (torch.randn(1, 3, 32, 32),))
    assert {g.id for g in space.groups} == {"a", "b"}
    assert not any("output layer" in s.reason for s in space.skipped)


def test_constrained_space_ties_or_leaves_whole() -> None:
    from edgeprune.pipeline.prune.space import Group, PruningSpace

    groups = [Group(f"l{i}.fc1", "channels", 32, (f"l{i}.fc1(out)",), ((0,),), (tuple(range(32)),)) for i in range(3)]
    space = PruningSpace([*groups, Group("other", "channels", 16, ("other(out)",), ((0,),), (tuple(range(16)),))], [])
    tied = space.constrained([["l0.fc1", "l1.fc1", "l2.fc1"]], "one width")
    assert [g.id for g in tied.groups] == ["l0.fc1", "l1.fc1", "l2.fc1"]
    assert tied.tied == (("l0.fc1", "l1.fc1", "l2.fc1"),)
    assert [s.id for s in tied.skipped] == ["other"]
    from edgeprune.pipeline.prune.select import plan_at_level

    plan = plan_at_level(tied, {g.id: list(range(g.size)) for g in tied.groups}, 0.6, 16)
    assert len({len(g.keep) for g in plan.groups.values()}) == 1, "tied groups keep one width"
    lacking = space.constrained([["l0.fc1", "l1.fc1", "l9.fc1"]], "one width")
    assert not lacking.groups and any("tied to l9.fc1" in s.reason for s in lacking.skipped)


def test_several_tied_sets_each_keep_one_width_or_one_fraction() -> None:
    """Two sets, as a decoder's MLP width and its heads would be: each keeps one width (one
    fraction where its groups' sizes differ, as a Swin's stages), independently of the other; a
    set one of whose groups cannot be cut stays whole without taking the other set with it."""
    from edgeprune.ecosystems.base import Constraint, TiedSet
    from edgeprune.pipeline.prune.select import plan_at_level
    from edgeprune.pipeline.prune.space import Group, PruningSpace

    def group(name: str, size: int) -> Group:
        return Group(name, "channels", size, (f"{name}(out)",), ((0,),), (tuple(range(size)),))

    space = PruningSpace([group("a0", 64), group("a1", 64), group("b0", 32), group("b1", 64), group("c", 48)], [])
    constraint = Constraint(
        "two widths",
        (TiedSet(("a0", "a1"), "intermediate_size"), TiedSet(("b0", "b1"), "mlp_ratio"), TiedSet(("c",), "c")),
    )
    assert constraint.tied and constraint.prunable == ("a0", "a1", "b0", "b1", "c")
    tied = space.constrained([s.roots for s in constraint.sets], constraint.why)
    assert tied.tied == (("a0", "a1"), ("b0", "b1")) and tied.tied_set("c") is None
    scores = {g.id: list(range(g.size)) for g in tied.groups}
    for level in (0.3, 0.5, 0.8):
        kept = {gid: len(k.keep) for gid, k in plan_at_level(tied, scores, level, 16).groups.items()}
        assert kept["a0"] == kept["a1"] < 64
        assert kept["b1"] == 2 * kept["b0"] < 64  # one fraction of sizes 32 and 64
    assert PruningSpace.from_dict(tied.to_dict()).tied == tied.tied
    lacking = space.constrained([("a0", "a9"), ("b0", "b1")], "two widths")
    assert [g.id for g in lacking.groups] == ["b0", "b1"] and lacking.tied == (("b0", "b1"),)
    assert any(s.id == "a0" and "tied to a9" in s.reason for s in lacking.skipped)
