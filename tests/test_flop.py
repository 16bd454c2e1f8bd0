"""FLOP (factorized L0 pruning): the factorization, the L0 gates under the augmented Lagrangian,
physical removal of zero ranks, the merge-back rule, heads and MLP units on a transformer, the
end-to-end pipeline, and the character language model it is benchmarked on."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgeprune import models
from edgeprune.exporters import OnnxExporter
from edgeprune.pipeline.counting import count
from edgeprune.pipeline.data import DataBundle
from edgeprune.pipeline.data.text import char_corpus, encode
from edgeprune.pipeline.learned.factorized import FactorizedLinear, factorize, merge_expensive
from edgeprune.pipeline.learned.l0 import HardConcrete
from edgeprune.pipeline.methods import Goal, get_method
from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.plan import GroupKeep, Plan
from edgeprune.pipeline.prune.space import discover
from edgeprune.pipeline.recovery.evaluate import bits_per_char
from edgeprune.pipeline.recovery.trainer import TrainConfig, train

VECTOR = (torch.randn(1, 32),)


class MLP(nn.Module):
    """32 -> 96 -> 64 -> 4: two large Linears to factorize, a classifier head left whole."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 96)
        self.fc2 = nn.Linear(96, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def linear_task() -> tuple[list, list]:
    """A 4-class linear task on 32-d Gaussians (`--data tests.test_flop:linear_task`)."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1024, 32, generator=g), torch.randn(32, 4, generator=g)
    y = (x @ w).argmax(1)
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 1024, 64)]
    return batches, batches[:4]


def bundle() -> DataBundle:
    train_b, val_b = linear_task()
    return DataBundle(train_b, val_b, 4, None, "linear_task")


def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP().eval()


@pytest.fixture(scope="module")
def flop_mlp():
    """An MLP after FLOP's prepare: 300 cheap steps toward keeping 40% of the unfactorized MACs."""
    model = mlp()
    space = discover(model, VECTOR)
    method = get_method("flop", steps=300, min_params=1024)
    torch.manual_seed(0)
    method.prepare(model, space, VECTOR, bundle(), Goal(cost_fraction=0.4))
    return model, method


# ------------------------------------------------------------------------------ mechanism


def test_hard_concrete_keep_probability_is_the_sampled_nonzero_rate() -> None:
    gates = HardConcrete(3)
    with torch.no_grad():
        gates.log_alpha.copy_(torch.tensor([-3.0, 0.0, 3.0]))
    torch.manual_seed(0)
    samples = torch.stack([gates() for _ in range(20000)])
    assert samples.min() == 0 and samples.max() == 1  # exact zeros and ones occur
    assert torch.allclose((samples > 0).float().mean(0), gates.keep_probability().detach(), atol=0.02)
    assert gates.eval()().tolist() == [0.0, pytest.approx(0.5), 1.0]  # deterministic at test time


def test_svd_factorization_preserves_the_function_and_merges_back() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(40, 24)
    pair = FactorizedLinear.from_linear(linear)
    x = torch.randn(5, 7, 40)
    assert pair.rank == 24 and torch.allclose(pair(x), linear(x), atol=1e-5)
    assert torch.allclose(pair.merged()(x), linear(x), atol=1e-5)


def test_merge_back_only_where_the_pair_is_no_cheaper() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    factorize(model, ["0", "2"])
    for name, rank in (("0", 32), ("2", 31)):  # 32·(64+64) = 64·64: no saving; 31 ranks save
        pair = model.get_submodule(name)
        pair.down.weight = nn.Parameter(pair.down.weight[:rank].detach())
        pair.down.out_features = pair.up.in_features = rank
        pair.up.weight = nn.Parameter(pair.up.weight[:, :rank].detach())
    x = torch.randn(3, 64)
    before = model(x)
    assert merge_expensive(model) == ["0"]
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], FactorizedLinear)
    assert torch.allclose(model(x), before, atol=1e-5)


def test_l0_gates_reach_the_requested_sparsity(flop_mlp) -> None:
    _, method = flop_mlp
    r = method.result
    assert r["factorized"] == ["fc1", "fc2"]  # the head (an output layer) stays dense
    assert r["history"][0]["expected_sparsity"] < 0.1  # gates start open
    assert abs(r["expected_sparsity"] - r["target_sparsity"]) < 0.05, r["history"]
    assert r["history"][-1]["lambda2"] > 0  # the multipliers were raised (ascent)
    assert 0.2 < r["deterministic_zero_fraction"] < 0.9  # and gates are exactly zero, ready to remove


def test_zero_gates_are_removed_without_changing_the_function(flop_mlp) -> None:
    """The gates are folded into the weights, so dropping every unit whose gate is 0 is exact."""
    model, method = flop_mlp
    space = discover(model, VECTOR)
    keep_prob = method.result["keep_probability"]
    threshold = float(torch.sigmoid(torch.tensor(np.log(1 / 11)) + 2 / 3 * np.log(11)))  # keep prob of a gate at 0
    groups = {
        g.id: GroupKeep(
            g.kind,
            g.size,
            tuple(i for i, p in enumerate(keep_prob[g.id]) if p > threshold + 1e-6)
            if g.id in keep_prob
            else tuple(range(g.size)),
        )
        for g in space.groups
    }
    pruned = apply(copy.deepcopy(model), Plan(groups), VECTOR)
    assert count(pruned, VECTOR).params < count(model, VECTOR).params
    x = torch.randn(16, 32)
    assert torch.allclose(pruned(x), model(x), atol=1e-5)


def test_pruned_factorized_linears_are_smaller_in_onnx(flop_mlp, tmp_path: Path) -> None:
    model, method = flop_mlp
    space = discover(model, VECTOR)
    scores = method.scores(model, space, VECTOR)
    from edgeprune.pipeline.prune.select import plan_at_level

    plan = plan_at_level(space, scores, 0.7, round_to=8, method="flop", ranking="global")
    pruned = apply(copy.deepcopy(model), plan, VECTOR)
    method.reconstruct(model, pruned, space, plan, VECTOR)
    path = OnnxExporter().export(pruned, VECTOR, tmp_path / "flop.onnx").path
    original = OnnxExporter().export(mlp(), VECTOR, tmp_path / "dense.onnx").path

    def matrices(p: Path) -> list[tuple[int, ...]]:
        return sorted(tuple(i.dims) for i in onnx.load(str(p)).graph.initializer if len(i.dims) == 2)

    dense, small = matrices(original), matrices(path)
    assert sum(np.prod(d) for d in small) < 0.6 * sum(np.prod(d) for d in dense), (dense, small)
    factorized = [n for n, m in pruned.named_modules() if isinstance(m, FactorizedLinear)]
    assert factorized and len(small) == len(dense) + len(factorized)  # each factorized pair: two matrices
    x = torch.randn(1, 32)
    out = ort.InferenceSession(str(path)).run(None, {ort.InferenceSession(str(path)).get_inputs()[0].name: x.numpy()})[
        0
    ]
    assert np.allclose(out, pruned(x).detach().numpy(), atol=1e-5)


def test_flop_gates_heads_and_mlp_units_of_a_transformer(tmp_path: Path) -> None:
    """On a causal transformer (the char LM, tiny): MLP ranks, MLP hidden units and whole heads are
    gated; the residual stream (through LayerNorm) is not; the pruned model exports and matches."""
    torch.manual_seed(0)
    model = models.create("char_lm", num_classes=128, dim=32, depth=1, num_heads=4, context=16).eval()
    tokens = (torch.randint(0, 128, (1, 16)),)
    train_b, val_b = char_corpus(context=16, batch_size=8)
    method = get_method("flop", steps=20, min_params=1024)
    method.prepare(
        model, discover(model, tokens), tokens, DataBundle(train_b, val_b, None, None, "text"), Goal(cost_fraction=0.5)
    )
    assert set(method.result["keep_probability"]) == {
        "blocks.0.mlp.fc1.down",
        "blocks.0.mlp.fc1.up",
        "blocks.0.mlp.fc2.down",
        "blocks.0.attn:heads",
    }
    space = discover(model, tokens)
    from edgeprune.pipeline.prune.select import plan_at_level

    plan = plan_at_level(space, method.scores(model, space, tokens), 0.5, round_to=8, method="flop", ranking="global")
    assert len(plan.groups["blocks.0.attn:heads"].keep) == 2
    pruned = apply(copy.deepcopy(model), plan, tokens)
    path = OnnxExporter().export(pruned, tokens, tmp_path / "lm.onnx").path
    sess = ort.InferenceSession(str(path))
    out = sess.run(None, {sess.get_inputs()[0].name: tokens[0].numpy()})[0]
    assert np.allclose(out, pruned(tokens[0]).detach().numpy(), atol=1e-4)
    assert count(pruned, tokens).flops < 0.7 * count(model, tokens).flops


def test_flop_end_to_end_with_a_flops_budget_and_resume(tmp_path: Path) -> None:
    """`compress --method flop` on a Linear model: factorized, gated, searched to a FLOPs budget,
    merged where cheaper; a second run resumes the prepare stage into the factorized architecture."""
    from edgeprune.pipeline.compress import Settings, compress
    from edgeprune.pipeline.loading import from_module

    budget = 0.5 * count(mlp(), VECTOR).flops
    settings = Settings(
        budget=f"{budget / 1e6:.6f}MFLOPs",
        method="flop",
        data="tests.test_flop:linear_task",
        recover="none",
        round_to=8,
        method_options={"steps": 40, "min_params": 1024},
    )
    runs = []
    for _ in range(2):
        lines: list[str] = []
        result = compress(from_module(mlp(), VECTOR), settings, tmp_path / "out", lines.append)
        runs.append((lines, result))
    first, second = runs[0][1], runs[1][1]
    assert first.report["final"]["flops"] <= budget and first.met
    assert first.report["method"]["learned"]["factorized"] == ["fc1", "fc2"]
    assert any(line.startswith("[prepare] resumed") for line in runs[1][0])
    assert first.plan.to_dict()["groups"] == second.plan.to_dict()["groups"]
    pairs = [m for m in first.model.modules() if isinstance(m, FactorizedLinear)]
    assert pairs and not any(m.costs_more_than_dense for m in pairs)  # the rest were merged back


def test_nothing_to_gate_is_a_one_line_error() -> None:
    from edgeprune.errors import EdgepruneError

    model = nn.Sequential(nn.Linear(32, 4))  # only an output layer
    with pytest.raises(EdgepruneError) as info:
        get_method("flop", steps=1).prepare(model, discover(model, VECTOR), VECTOR, bundle(), Goal(cost_fraction=0.5))
    assert "min_params" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------ the character LM


def test_char_lm_example_input_is_token_ids() -> None:
    from edgeprune.pipeline.loading import build_arch, from_module

    loaded = from_module(build_arch("char_lm", 128), arch="char_lm")
    assert loaded.example_inputs[0].dtype == torch.int64 and loaded.input_shape == (1, 128)


def test_char_lm_learns_the_project_text() -> None:
    train_b, val_b = char_corpus(context=32, batch_size=16)
    assert encode("a\u00e9")[1] == 0 and len(train_b) > 9 * len(val_b) // 2
    val = list(itertools.islice(val_b, 4))
    torch.manual_seed(0)
    model = models.create("char_lm", num_classes=128, dim=32, depth=1, context=32)
    before = bits_per_char(model, val)
    train(model, train_b, TrainConfig(steps=60, lr=0.05, weight_decay=0.0), log=lambda line: None)
    assert before > 6.5 and bits_per_char(model, val) < before - 1.5
