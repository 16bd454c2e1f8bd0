"""The models users bring, as small replicas (tests/replicas.py): every one prunes without a raw
exception, and every group that ships computes exactly the original with its removed units
silenced; what cannot be shown so is left whole with a reason."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import edgeprune
from edgeprune import modelrun
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.counting import count
from edgeprune.pipeline.loading import from_module
from edgeprune.pipeline.oneshot import PruneResult, prune_to_ratio
from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.exact import matches
from edgeprune.pipeline.prune.mha import MultiheadAttention
from edgeprune.pipeline.prune.select import plan_at_level
from edgeprune.pipeline.prune.space import discover, silenced_outputs
from tests import replicas as R


def _pruned(name: str, ratio: float = 0.5) -> tuple[nn.Module, tuple[torch.Tensor, ...], PruneResult]:
    model, x = R.build(name)
    loaded = from_module(model, x)
    return loaded.model, x, prune_to_ratio(loaded, ratio, round_to=4)


def _reasons(result: PruneResult) -> dict[str, str]:
    return {s.id: s.reason for s in result.space.skipped}


@pytest.mark.parametrize("name", sorted(R.REPLICAS))
def test_every_replica_prunes_to_exactly_the_silenced_original(name: str) -> None:
    model, x, res = _pruned(name)
    assert res.space.groups, f"{name}: nothing prunable"
    assert modelrun.output_shapes(modelrun.run(res.model, x)) == modelrun.output_shapes(modelrun.run(model, x))
    assert matches(modelrun.run(res.model, x), silenced_outputs(model, res.plan, x))
    assert count(res.model, x).params < count(model, x).params


@pytest.mark.parametrize("name", sorted(R.REPLICAS))
def test_random_plans_never_raise_and_stay_exact(name: str) -> None:
    """Fuzz: random scores at random levels on every discovered group."""
    model, x = R.build(name)
    model = from_module(model, x).model
    space = discover(model, x)
    rng = np.random.default_rng(0)
    for level in rng.uniform(0.05, 0.95, 4):
        scores = {g.id: rng.random(g.size) for g in space.groups}
        plan = plan_at_level(space, scores, float(level), round_to=int(rng.choice([1, 2, 4, 8])))
        pruned = apply(copy.deepcopy(model), plan, x)
        assert matches(modelrun.run(pruned, x), silenced_outputs(model, plan, x)), f"{name} at level {level:.2f}"
        small = edgeprune.prune(model, x, ratio=float(level), round_to=int(rng.choice([1, 4, 16])))
        assert modelrun.output_shapes(modelrun.run(small, x)) == modelrun.output_shapes(modelrun.run(model, x))


def test_glu_halves_shrink_together() -> None:
    _, _, res = _pruned("glu")
    assert res.space.get("conv").size == 32  # one unit per channel pair (a_i, b_i)
    assert res.model.conv.out_channels == 2 * res.model.out[0].in_channels < 64


def test_c2f_chunk_parts_stay_equal() -> None:
    _, _, res = _pruned("c2f")
    c2f = res.model[1]
    assert c2f.cv1[0].out_channels == 2 * c2f.m[0].cv1[0].in_channels < 32
    assert c2f.cv2[0].in_channels == 4 * c2f.m[0].cv1[0].in_channels


def test_channel_shuffle_groups_are_left_whole_with_a_reason() -> None:
    _, _, res = _pruned("channel_shuffle")
    reasons = _reasons(res)
    assert "changes what the model computes" in reasons["stem.0"]
    assert "branch.1.0" in {g.id for g in res.space.groups}  # the branch's inner channels still go


def test_window_attention_loses_heads_and_their_bias_columns() -> None:
    _, _, res = _pruned("window_attention")
    attn = res.model.attn
    assert attn.num_heads == 2 and attn.relative_position_bias_table.shape[1] == 2
    assert attn.qkv.out_features == 3 * 2 * 8 and attn.proj.in_features == 16
    assert res.model.merge_norm.normalized_shape[0] == 4 * res.model.norm1.normalized_shape[0] < 128


def test_hf_attention_heads_go_with_its_outside_output_projection() -> None:
    model, x, res = _pruned("hf_attention")
    layer = res.model.layers[0]
    assert layer.attention.num_attention_heads == 2 and layer.attention.all_head_size == 16
    assert layer.attention.query.out_features == 16 and layer.dense.in_features == 16
    assert res.model.embeddings.embedding_dim < 32  # the residual stream shrinks too
    assert count(res.model, x).params <= 0.6 * count(model, x).params


def test_grouped_query_attention_keeps_its_heads_but_not_its_widths() -> None:
    _model, _x, res = _pruned("gqa")
    assert "grouped-query attention" in _reasons(res)["layers.0.attention:heads"]
    assert res.model.layers[0].attention.num_attention_heads == 4
    assert res.model.layers[0].intermediate.out_features < 128


def test_torch_multihead_attention_is_swapped_for_an_equal_one_whose_heads_go() -> None:
    model, x = R.build("torch_mha")
    loaded = from_module(model, x)
    assert isinstance(model.self_attention, nn.MultiheadAttention)  # the caller's module is untouched
    assert isinstance(loaded.model.self_attention, MultiheadAttention) and loaded.swapped
    torch.testing.assert_close(loaded.model(*x), model(*x), rtol=1e-5, atol=1e-6)
    res = prune_to_ratio(loaded, 0.5, round_to=4)
    assert res.model.self_attention.num_heads == 2 and res.model.self_attention.out_proj.in_features == 16


@pytest.mark.parametrize("batch_first", [True, False])
def test_swapped_attention_matches_pytorch_with_masks_and_weights(batch_first: bool) -> None:
    torch.manual_seed(0)
    native = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=12, vdim=12).eval()
    ours = MultiheadAttention.from_native(native).eval()
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    pad = torch.tensor([[False] * 6 + [True], [False] * 7])
    causal = torch.ones(5, 7, dtype=torch.bool).triu(1)
    per_head = torch.randn(2 * 4, 5, 7)
    for kwargs in (
        {},
        {"key_padding_mask": pad},
        {"attn_mask": causal},
        {"attn_mask": per_head, "average_attn_weights": False},
    ):
        want, want_w = native(q, kv, kv, **kwargs)
        got, got_w = ours(q, kv, kv, **kwargs)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-5)


def test_conv1d_layers_become_linears_and_gpt2_heads_go() -> None:
    _, _x, res = _pruned("gpt2_conv1d")
    attn = res.model.attn
    assert isinstance(attn.c_attn, nn.Linear) and attn.num_heads == 2 and attn.split_size == 16
    assert attn.c_attn.out_features == 3 * 16


def test_detector_outputs_keep_their_channels() -> None:
    _, _, res = _pruned("detector")
    assert "model's outputs" in _reasons(res)["box.0.1"]
    assert res.model.box[0][1].out_channels == 16 and res.model.cls[1][1].out_channels == 5
    assert res.model.c2.cv1[0].out_channels < 64


@pytest.mark.parametrize("name", ["resnext", "regnet"])
def test_grouped_convolutions_shrink_evenly_per_group(name: str) -> None:
    model, _x, res = _pruned(name)
    grouped = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels}
    assert grouped
    for n, m in grouped.items():
        p = res.model.get_submodule(n)
        assert p.groups == m.groups and p.in_channels < m.in_channels and p.in_channels % p.groups == 0
    assert not any("grouped" in s.reason for s in res.space.skipped)
    assert any(g.even_by.startswith("grouped convolution") for g in res.space.groups)


def test_group_norm_channels_go_evenly_per_group() -> None:
    _, _, res = _pruned("groupnorm")
    gn = res.model.gn
    assert gn.num_groups == 8 and gn.num_channels % 8 == 0 and gn.num_channels < 32


def test_a_split_into_listed_sizes_updates_the_attribute_holding_them() -> None:
    _, _, res = _pruned("mixconv")
    m = res.model
    assert m.splits == [p[0].in_channels for p in m.parts] and sum(m.splits) == m.stem[0].out_channels < 32
    inline, x = R.MixConv(inline=True).eval(), (torch.randn(*R.IMAGE),)  # the sizes written in forward: stuck
    space = discover(inline, x)
    assert all("stem.0(out)" not in g.members for g in space.groups)
    assert any("split" in s.reason for s in space.skipped)
    assert edgeprune.prune(inline, x, ratio=0.5, round_to=4).stem[0].out_channels == 32


def test_a_reshape_width_held_in_an_attribute_shrinks_with_the_stream() -> None:
    _, _, res = _pruned("patch_vit")
    m = res.model
    assert m.hidden_dim == m.conv_proj.out_channels == m.class_token.shape[-1] == m.heads.in_features < 32
    assert m.block.self_attention.num_heads < 4


def test_time_limit_leaves_everything_whole_with_the_reason() -> None:
    model, x = R.build("resnext")
    space = discover(model, x, time_limit_s=0.0)
    assert not space.groups and space.skipped
    assert all("within the 0 s analysis time limit" in s.reason for s in space.skipped)
    pruned = edgeprune.prune(model, x, ratio=0.5, time_limit_s=0.0)
    assert count(pruned, x).params == count(model, x).params


class _FunctionalAttention(nn.Module):
    """torchvision's Swin calls F.linear with its layers' weights: no hook sees the projections, and
    the graph follows q·kᵀ and the window reshapes as if they were channel-wise."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 2
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = nn.functional.linear(x, self.qkv.weight, self.qkv.bias).reshape(
            b, n, 3, self.num_heads, c // self.num_heads
        )
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return nn.functional.linear(out, self.proj.weight, self.proj.bias)


def test_attention_the_graph_cannot_follow_is_left_whole_not_crashed() -> None:
    model = nn.Sequential(nn.Linear(8, 16), _FunctionalAttention(), nn.Linear(16, 10)).eval()
    x = (torch.randn(1, 6, 8),)
    space = discover(model, x)
    assert "0" not in {g.id for g in space.groups}
    assert any(s.id == "0" for s in space.skipped)
    torch.testing.assert_close(edgeprune.prune(model, x, ratio=0.5)(*x), model(*x))


def test_a_plan_for_another_model_is_one_line() -> None:
    model, x = R.build("resnext")
    from edgeprune.pipeline.prune.plan import GroupKeep, Plan

    with pytest.raises(EdgepruneError, match="does not match an attention module"):
        apply(model, Plan({"attn:heads": GroupKeep("heads", 4, (0, 1))}), x)
