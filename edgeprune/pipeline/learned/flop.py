"""FLOP: factorized L0 pruning (Wang, Wohlwend & Lei, "Structured Pruning of Large Language
Models", arXiv 1910.04732, 2019).

1. Every large Linear (in·out >= `min_params`; not an output layer, and not the fused qkv / proj of
   an attention module whose heads are pruned instead unless `factorize_attention`) is factorized
   as P · diag(z) · Q by SVD at full rank (factorized.py: the function is unchanged).
2. Hard-concrete L0 gates z (l0.py: log_alpha per unit, beta 2/3, stretch (-0.1, 1.1)) sit on
   every rank unit, and also on the other structured units a transformer has: MLP hidden units
   (the channel groups of the space) and whole attention heads (a gate per head on the output
   projection's input). Groups that pass a LayerNorm (the residual stream) are not gated: removing
   a unit there changes the norm's statistics, so a gate is not its removal, and FLOP does not
   prune the model dimension either.
3. Weights and gates train together under the task loss plus the augmented Lagrangian
   lambda1 (s - t) + lambda2 (s - t)^2, where s is the expected sparsity (1 - E[cost] / cost, the
   cost being the exact per-layer MACs with each group scaled by its expected kept fraction, the
   search's own cost model) and t the target; the lambdas are *maximized* (gradient ascent), so
   the constraint is enforced rather than traded off. t rises linearly from 0 over the first
   `warmup` of the steps (the authors' code anneals the target too). Gates use Adam, weights the
   shared trainer's SGD, the lambdas plain gradient ascent. Keep the weights' lr low (default
   0.01): an SGD step on the pair P, Q moves W = PQ about 2 sigma times as far as the same step on
   W would (sigma: W's singular values); on the char LM, 0.05 diverged (2.02 -> 4.58 bits per
   character in 60 steps) where the dense model did not, and the same holds for fine-tuning the
   pruned, still factorized model.
4. The deterministic gate values are folded into the producing layers (or the head's projection
   columns), so the prepared model computes what the gated network computed, and each unit's
   score is its keep probability P(z != 0): one global ranking over all gated units, so the
   pipeline's budget search sets one threshold, and physical pruning removes the zero ranks and
   units (`apply`). Finally (`reconstruct`) a factorized pair left at a rank where
   r·(in + out) >= in·out is merged back into one dense Linear.

Departures from the paper, honestly: the target t is the budget's cost fraction (for a latency
budget, the latency fraction used as a MACs fraction, as TAS does), applied to the whole model's
modelled MACs relative to the *unfactorized* model, where the paper counts parameters of the
factorized matrices; gates start at log_alpha = 2.5 (all gates open, a trained network unchanged)
where the authors' code starts at keep probability ~0.5, because here pruning starts from a trained
model with a short schedule; head gates order heads within each attention module, but heads follow
the search's level uniformly (the plan's head groups are not on the channels' global scale);
`load_pruned` cannot rebuild a FLOP model from plan.json (its groups name factorized layers that
the original architecture lacks): use model.pt or model.onnx.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.counting import layer_macs
from edgeprune.pipeline.learned import gating
from edgeprune.pipeline.learned.factorized import factorize, merge_expensive
from edgeprune.pipeline.learned.l0 import HardConcrete
from edgeprune.pipeline.prune import attention
from edgeprune.pipeline.prune import space as space_mod
from edgeprune.pipeline.prune.graph import Graph
from edgeprune.pipeline.prune.methods.base import Goal, LearnedImportance, Scores, register
from edgeprune.pipeline.prune.methods.l1 import L1Importance
from edgeprune.pipeline.prune.space import HEADS_SUFFIX, PruningSpace
from edgeprune.pipeline.recovery.trainer import TrainConfig, cross_entropy, train
from edgeprune.pipeline.search.cost_model import CostModel

RANK_SUFFIX = ".down"  # a factorized Linear's rank group is rooted at its `down` layer


def factorizable(
    model: nn.Module,
    space: PruningSpace,
    example_inputs: Sequence[torch.Tensor],
    min_params: int,
    factorize_attention: bool,
) -> list[str]:
    """The Linears FLOP factorizes: large ones, not output layers, not left whole by the space
    (e.g. --unprunable), and not attention projections whose heads are a prunable group."""
    outputs = space_mod.output_layers(model, example_inputs)
    whole = {s.id for s in space.skipped}
    head_layers = set()
    if not factorize_attention:
        pruned_heads = {g.id for g in space.groups if g.kind == "heads"}
        head_layers = {
            p
            for s in attention.find_attention(model, example_inputs)
            if s.name + HEADS_SUFFIX in pruned_heads
            for p in (*s.projections, s.proj)
        }
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and m.in_features * m.out_features >= min_params
        and name not in outputs
        and name not in whole
        and name not in head_layers
    ]


class Gates(nn.Module):
    """One HardConcrete per gated group; `sample()` draws every group's gates once per forward
    pass, so every place a group's units are written sees the same z."""

    def __init__(self, sizes: dict[str, int], init: float) -> None:
        super().__init__()
        self.ids = list(sizes)
        self.gates = nn.ModuleList([HardConcrete(n, init) for n in sizes.values()])
        self.current: dict[str, torch.Tensor] = {}

    def __getitem__(self, gid: str) -> HardConcrete:
        return cast(HardConcrete, self.gates[self.ids.index(gid)])

    def each(self) -> list[tuple[str, HardConcrete]]:
        """(group id, its gates) for every gated group, in order."""
        return [(gid, cast(HardConcrete, g)) for gid, g in zip(self.ids, self.gates)]

    def sample(self) -> None:
        self.current = {gid: g() for gid, g in self.each()}

    def keep_fractions(self) -> dict[str, torch.Tensor]:
        """Each group's expected kept fraction (mean keep probability), differentiable."""
        return {gid: g.keep_probability().mean() for gid, g in self.each()}


@contextlib.contextmanager
def gated(
    model: nn.Module, gates: Gates, points: Sequence[gating.HookPoint], heads: dict[str, attention.AttentionSite]
) -> Iterator[None]:
    """Multiply each gated group's units by its current gates while open: channels where they are
    produced (gating.py), heads on the output projection's input (each head's columns)."""

    def head_hook(
        gid: str, site: attention.AttentionSite
    ) -> Callable[[nn.Module, tuple[Any, ...]], tuple[torch.Tensor]]:
        def run(mod: nn.Module, args: tuple[Any, ...]) -> tuple[torch.Tensor]:
            x = args[0]
            return (x * gates.current[gid].repeat_interleave(x.shape[-1] // site.num_heads),)

        return run

    handles = [
        attention.projection(model, site.proj).register_forward_pre_hook(head_hook(gid, site))
        for gid, site in heads.items()
    ]
    try:
        with gating.channel_hooks(model, points, lambda p, out: out * p.along(gates.current[p.group], out)):
            yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def fold(
    model: nn.Module, gates: Gates, points: Sequence[gating.HookPoint], heads: dict[str, attention.AttentionSite]
) -> None:
    """Scale the layers by the deterministic gates, so the model without hooks computes what the
    gated model computes in eval mode (a gate of 0 silences its unit; pruning then removes it)."""
    for p in points:
        layer = model.get_submodule(p.layer)
        z = gates[p.group].deterministic()[p.units]
        weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
        if weight is None:
            raise EdgepruneError(f"FLOP cannot fold its gates into {p.layer} (no affine weight); mark it --unprunable")
        weight.mul_(z.view(-1, *[1] * (weight.dim() - 1)))
        if bias is not None:
            bias.mul_(z)
    for gid, site in heads.items():
        z = gates[gid].deterministic()
        proj = attention.projection(model, site.proj)
        proj.weight.mul_(z.repeat_interleave(proj.in_features // site.num_heads)[None, :])


@register
class FLOP(LearnedImportance):
    name = "flop"
    reference = "Wang, Wohlwend & Lei, Structured Pruning of Large Language Models (FLOP), 2019"
    ranking = "global"
    needs_data = True
    default_recovery = "finetune"

    def __init__(
        self,
        epochs: int | None = None,
        steps: int | None = None,
        lr: float = 0.01,
        gate_lr: float = 0.05,
        lambda_lr: float = 0.1,
        warmup: float = 0.5,
        init: float = 2.5,
        min_params: int = 4096,
        factorize_attention: bool = False,
        target: float | None = None,
    ) -> None:
        super().__init__()
        self.config = TrainConfig.budget(epochs, steps, lr=lr)
        self.gate_lr = gate_lr
        self.lambda_lr = lambda_lr
        self.warmup = warmup
        self.init = init
        self.min_params = min_params
        self.factorize_attention = factorize_attention
        self.target = target  # the kept cost fraction; default: the budget's (Goal.cost_fraction)

    def prepare(
        self,
        model: nn.Module,
        space: PruningSpace,
        example_inputs: Sequence[torch.Tensor],
        data: Any = None,
        goal: Goal | None = None,
    ) -> nn.Module:
        """Factorize `model` in place, learn weights and gates, fold the gates in; returns `model`."""
        fraction = self.target if self.target is not None else (goal or Goal()).cost_fraction
        if fraction is None:
            raise EdgepruneError(
                "FLOP prunes toward a target: give a budget (compress does) or --method-option target=0.5"
            )
        base_macs = sum(layer_macs(model, example_inputs).values())
        names = factorizable(model, space, example_inputs, self.min_params, self.factorize_attention)
        factorize(model, names)
        groups = self._gated_groups(model, space, example_inputs, names)
        if not groups:
            raise EdgepruneError(
                f"FLOP found no Linear with at least {self.min_params} weights and no MLP unit or head to gate; "
                "lower its min_params option or use --method l1"
            )
        gates = Gates({g.id: g.size for g in groups}, self.init)
        channels = PruningSpace([g for g in groups if g.kind == "channels"], [])
        points = gating.hook_points(model, channels, example_inputs)
        sites = {s.name + HEADS_SUFFIX: s for s in Graph(model, example_inputs).sites}
        heads = {g.id: sites[g.id] for g in groups if g.kind == "heads"}
        cost = CostModel(model, PruningSpace(groups, []), example_inputs)
        target = float(np.clip(1.0 - fraction * base_macs / cost.total, 0.0, 0.99))
        history = self._train(model, gates, points, heads, cost, target, data)
        gates.eval()
        fold(model, gates, points, heads)
        self.result = {
            "factorized": names,
            "target_sparsity": target,
            "expected_sparsity": history[-1]["expected_sparsity"],
            "deterministic_zero_fraction": float(
                torch.cat([g.deterministic() == 0 for _, g in gates.each()]).float().mean()
            ),
            "keep_probability": {gid: g.keep_probability().detach().tolist() for gid, g in gates.each()},
            "history": history,
        }
        return model

    def _gated_groups(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], names: list[str]
    ) -> list[space_mod.Group]:
        """The factorized model's groups that get gates: the rank groups, and the original space's
        groups (renamed when their root was factorized), less those through a LayerNorm."""
        renamed = {n: n + ".up" for n in names}
        allowed = {renamed.get(g.id, g.id) for g in space.groups} | {n + RANK_SUFFIX for n in names}
        found = space_mod.discover(model, example_inputs)
        return [
            g
            for g in found.groups
            if g.id in allowed and not (g.kind == "channels" and space_mod.through_norm(model, g))
        ]

    def _train(
        self,
        model: nn.Module,
        gates: Gates,
        points: Sequence[gating.HookPoint],
        heads: dict[str, attention.AttentionSite],
        cost: CostModel,
        target: float,
        data: Any,
    ) -> list[dict[str, float]]:
        """Weights by the trainer's SGD; gates (Adam) and lambdas (ascent) step as soon as their
        gradients arrive, in the same backward pass (post-accumulate-grad hooks)."""
        lambdas = nn.Parameter(torch.zeros(2))
        optimizers: dict[torch.Tensor, torch.optim.Optimizer] = {
            lambdas: torch.optim.SGD([lambdas], lr=self.lambda_lr, maximize=True)
        }
        optimizers |= {p: torch.optim.Adam([p], lr=self.gate_lr) for p in gates.parameters()}

        def step(p: torch.Tensor) -> None:
            optimizers[p].step()
            optimizers[p].zero_grad(set_to_none=True)

        handles = [p.register_post_accumulate_grad_hook(step) for p in optimizers]
        total = self.config.total_steps(len(data.train))
        history: list[dict[str, float]] = []
        count = 0

        def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal count
            t = target * min(1.0, count / max(1.0, self.warmup * total))
            gates.sample()
            loss, logits = cross_entropy(net, x, y)
            sparsity = 1.0 - cost.expected_flops(gates.keep_fractions()) / cost.total
            gap = sparsity - t
            if count % max(total // 20, 1) == 0 or count == total - 1:
                history.append(
                    {
                        "step": count,
                        "expected_sparsity": float(sparsity.detach()),
                        "target": t,
                        "lambda1": float(lambdas[0].detach()),
                        "lambda2": float(lambdas[1].detach()),
                        "task_loss": float(loss.detach()),
                    }
                )
            count += 1
            return loss + lambdas[0] * gap + lambdas[1] * gap**2, logits

        gates.train()
        try:
            with gated(model, gates, points, heads):
                train(model, data.train, self.config, loss_fn, label="flop")
        finally:
            for h in handles:
                h.remove()
        return history

    def prepared_architecture(self, model: nn.Module) -> nn.Module:
        return factorize(model, self.result.get("factorized", []))

    def scores(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None
    ) -> Scores:
        """Keep probabilities of the gated units; ungated groups (the residual stream) score above
        every gate, 1 + their L1 share, so they go last and in L1 order."""
        learned = self.learned()["keep_probability"]
        rest = PruningSpace([g for g in space.groups if g.id not in learned], [])
        l1 = L1Importance().scores(model, rest, example_inputs) if rest.groups else {}
        return {
            g.id: np.asarray(learned[g.id]) if g.id in learned else 1.0 + l1[g.id] / max(l1[g.id].max(), 1e-12)
            for g in space.groups
        }

    def reconstruct(
        self,
        model: nn.Module,
        pruned: nn.Module,
        space: PruningSpace,
        plan: Any,
        example_inputs: Sequence[torch.Tensor],
        data: Any = None,
    ) -> None:
        """Merge each factorized pair that pruning left no cheaper than a dense Linear."""
        self.result["merged"] = merge_expensive(pruned)
