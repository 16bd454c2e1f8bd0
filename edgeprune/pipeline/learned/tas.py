"""TAS (Dong & Yang, "Network Pruning via Transformable Architecture Search", NeurIPS 2019).

The width of every prunable channel group and the depth of every run of removable residual blocks
are *searched*, with a learnable distribution over candidates, instead of ranked:

- Width: each group has logits over candidate widths (its hardware-aligned multiples, as the plan
  rounds them). Each forward pass samples two candidates from the Gumbel-softmax distribution
  (the paper's sampling of a few candidates) and aggregates the layer's output as
  sum_j p_j * CW(O[:, :w_j], C): the first w_j channels, resized back to C channels by
  channel-wise interpolation (adaptive average pooling along the channel axis, as the authors'
  code does). "First" is the group's channels ordered by L1 norm, so the first w are the strongest.
- Depth: each run of consecutive removable blocks has logits over how many of its blocks to keep
  (from the front); the run's output is sum_d h_d * O_d with hard (straight-through) Gumbel-softmax
  weights, O_d being the output after d blocks.
- Cost: the expected FLOPs under both distributions (cost_model.CostModel.expected_flops, exact
  per-layer MACs) enter the architecture loss as log(E[FLOPs]) when the argmax architecture is over
  the target and -log(E[FLOPs]) when it is more than 5% under, pushing the expected cost to the
  budget. Weights (SGD, task loss) and architecture logits (Adam, task loss + cost) are updated
  alternately on different batches, as in the paper's bi-level search.
- Result: the argmax widths and depths. They become scores on one global scale (a unit at rank r
  of a group whose searched width is w of n scores w/n - (r + 0.5)/n; a block at position i of a
  run that keeps d of k scores (d - i + 0.5)/k), so the budget search's global threshold 0
  reproduces TAS's architecture exactly, and moving the threshold (to meet the *measured* latency)
  shifts every group's width and every run's depth by the same fraction.

Two departures, both for short searches that start from a *trained* network (the paper searches
from random initialization for hundreds of epochs): the logits start in favour of the wide
candidates (logit = `prior` x kept fraction; `prior=0` is the paper's uniform start), and the
temperature falls from 2 rather than 10, so the search network begins close to the trained one and
narrows as the cost loss pushes; at the paper's settings a trained ResNet-20 drops to chance
accuracy under random widths and a few hundred steps cannot bring it back.

The paper trains the searched architecture from random initialization with knowledge distillation
from the unpruned network. Here the pruned model starts from the unpruned model's kept channels and
is distilled from it (`--recover distill`, this method's default), which needs far fewer epochs;
`--recover scratch` trains the searched shape from random initialization instead (without KD).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.learned import gating
from edgeprune.pipeline.prune import blocks as blocks_mod
from edgeprune.pipeline.prune.methods.base import Goal, LearnedImportance, Scores, register
from edgeprune.pipeline.prune.methods.l1 import L1Importance
from edgeprune.pipeline.prune.select import width_step
from edgeprune.pipeline.prune.space import PruningSpace
from edgeprune.pipeline.recovery.trainer import TrainConfig, train
from edgeprune.pipeline.search.cost_model import CostModel

#: the argmax architecture counts as on target within this fraction under it (the paper's tolerance)
TOLERANCE = 0.05


def channel_interpolate(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """CW(x, size): resize the channel axis `dim` of `x` to `size` by adaptive average pooling."""
    moved = x.movedim(dim, -1)
    flat = moved.reshape(-1, 1, moved.shape[-1])
    return nn.functional.adaptive_avg_pool1d(flat, size).reshape(*moved.shape[:-1], size).movedim(-1, dim)


def sample_two(logits: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two candidates drawn without replacement from the Gumbel-softmax distribution, with their
    renormalized (differentiable) weights; one candidate when there is only one."""
    gumbel = -torch.empty_like(logits).exponential_().log()
    noisy = (logits.log_softmax(-1) + gumbel) / tau
    probs = noisy.softmax(-1)
    picked = torch.multinomial(probs.detach() + 1e-7, min(2, len(logits)), replacement=False)
    return picked, noisy[picked].softmax(-1)


def hard_gumbel(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """A one-hot sample whose gradient is the Gumbel-softmax's (straight-through)."""
    gumbel = -torch.empty_like(logits).exponential_().log()
    soft = ((logits.log_softmax(-1) + gumbel) / tau).softmax(-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
    return hard - soft.detach() + soft


@dataclasses.dataclass
class _Run:
    """Consecutive removable blocks of one container; keeps `choices[j]` of them from the front."""

    blocks: list[str]
    choices: list[int]


def block_runs(model: nn.Module, found: Sequence[blocks_mod.Block]) -> list[_Run]:
    """Group removable blocks into runs of neighbours in the same container. A run that is its
    whole container keeps at least one block, so no stage disappears entirely."""
    runs: list[_Run] = []
    last: tuple[str, int] | None = None
    for b in found:
        parent, _, child = b.name.rpartition(".")
        siblings = list(model.get_submodule(parent)._modules) if parent else list(model._modules)
        pos = siblings.index(child)
        if runs and last == (parent, pos - 1):
            runs[-1].blocks.append(b.name)
        else:
            runs.append(_Run([b.name], []))
        last = (parent, pos)
    for run in runs:
        parent = run.blocks[0].rpartition(".")[0]
        whole = len(run.blocks) == len(model.get_submodule(parent)._modules if parent else model._modules)
        run.choices = list(range(1 if whole else 0, len(run.blocks) + 1))
    return runs


class _Search(nn.Module):
    """The search network's architecture parameters and the hooks that make the model searchable."""

    def __init__(
        self,
        model: nn.Module,
        space: PruningSpace,
        example_inputs: Sequence[torch.Tensor],
        order: dict[str, list[int]],
        runs: list[_Run],
        round_to: int,
        prior: float,
    ) -> None:
        super().__init__()
        self.model = model
        points = gating.hook_points(model, space, example_inputs)
        mixed = {p.group for p in points if not p.is_identity}  # concat-fed groups: kept at full width
        self.groups = [g for g in space.groups if g.kind == "channels" and g.id not in mixed]
        self.points = [p for p in points if p.group not in mixed]
        self.candidates = {
            g.id: list(range(width_step(g.size, g.kind, round_to), g.size + 1, width_step(g.size, g.kind, round_to)))
            for g in self.groups
        }
        self.order = {gid: torch.tensor(order[gid]) for gid in self.candidates}
        self.inverse = {gid: torch.argsort(o) for gid, o in self.order.items()}
        self.width_logits = nn.ParameterList(
            [
                nn.Parameter(prior * torch.tensor(self.candidates[g.id], dtype=torch.float32) / g.size)
                for g in self.groups
            ]
        )
        self.runs = runs
        self.depth_logits = nn.ParameterList(
            [nn.Parameter(prior * torch.tensor(r.choices, dtype=torch.float32) / len(r.blocks)) for r in runs]
        )
        self.tau = 10.0
        self.arch_grad = False  # whether the architecture logits get gradients from this forward
        self._picked: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._outputs: dict[int, list[torch.Tensor]] = {}

    def forward(self, *args: Any) -> Any:
        self._picked = {
            g.id: sample_two(self._logits(self.width_logits[i]), self.tau) for i, g in enumerate(self.groups)
        }
        self._outputs = {}
        return self.model(*args)

    def _logits(self, p: torch.Tensor) -> torch.Tensor:
        return p if self.arch_grad else p.detach()

    def width(self, point: gating.HookPoint, out: torch.Tensor) -> torch.Tensor:
        """sum_j p_j CW(O[:, :w_j], C) in the group's L1 order, then back to the layer's order."""
        picked, weights = self._picked[point.group]
        size = out.shape[point.dim]
        ordered = out.index_select(point.dim, self.order[point.group])
        widths = self.candidates[point.group]
        mixed = sum(
            w * channel_interpolate(ordered.narrow(point.dim, 0, widths[int(j)]), size, point.dim)
            for j, w in zip(picked, weights)
        )
        return mixed.index_select(point.dim, self.inverse[point.group])

    def hooks(self) -> list[Any]:
        """Forward hooks for the depth mixture (the width hooks are gating.channel_hooks)."""
        handles = []
        for r, run in enumerate(self.runs):
            first = self.model.get_submodule(run.blocks[0])
            handles.append(
                first.register_forward_pre_hook(lambda mod, args, r=r: self._outputs.__setitem__(r, [args[0]]))
            )
            for b in run.blocks:
                handles.append(
                    self.model.get_submodule(b).register_forward_hook(
                        lambda mod, args, out, r=r, last=b == run.blocks[-1]: self._depth(r, out, last)
                    )
                )
        return handles

    def _depth(self, r: int, out: torch.Tensor, last: bool) -> torch.Tensor | None:
        self._outputs[r].append(out)
        if not last:
            return None
        weights = hard_gumbel(self._logits(self.depth_logits[r]), self.tau)
        return sum(w * self._outputs[r][d] for w, d in zip(weights, self.runs[r].choices))

    def expected_flops(self, cost: CostModel) -> torch.Tensor:
        keep = {
            g.id: (self.width_logits[i].softmax(-1) * torch.tensor(self.candidates[g.id], dtype=torch.float32)).sum()
            / g.size
            for i, g in enumerate(self.groups)
        }
        return cost.expected_flops(keep, self._block_keep(lambda r: self.depth_logits[r].softmax(-1)))

    def argmax_flops(self, cost: CostModel) -> float:
        keep = {
            g.id: self.candidates[g.id][int(self.width_logits[i].argmax())] / g.size for i, g in enumerate(self.groups)
        }
        return float(
            cost.expected_flops(
                keep,
                self._block_keep(
                    lambda r: nn.functional.one_hot(self.depth_logits[r].argmax(), len(self.runs[r].choices)).float()
                ),
            )
        )

    def _block_keep(self, probs: Any) -> dict[str, torch.Tensor]:
        """P(block kept) = P(the run keeps at least its position) under each run's depth distribution."""
        out = {}
        for r, run in enumerate(self.runs):
            p = probs(r)
            for i, b in enumerate(run.blocks, start=1):
                out[b] = sum(p[j] for j, d in enumerate(run.choices) if d >= i)
        return out


@register
class TAS(LearnedImportance):
    name = "tas"
    reference = "Dong & Yang, Network Pruning via Transformable Architecture Search, NeurIPS 2019"
    ranking = "global"
    needs_data = True
    default_recovery = "distill"
    blocks_on_unit_scale = True

    def __init__(
        self,
        epochs: int | None = None,
        steps: int | None = None,
        lr: float = 0.02,
        arch_lr: float = 0.05,
        cost_weight: float = 2.0,
        tau: tuple[float, float] = (2.0, 0.1),
        prior: float = 4.0,
        round_to: int = 16,
    ) -> None:
        super().__init__()
        self.config = TrainConfig.budget(epochs, steps, lr=lr)
        self.arch_lr = arch_lr
        self.cost_weight = cost_weight
        self.tau = tau
        self.prior = prior
        self.round_to = round_to

    def prepare(
        self,
        model: nn.Module,
        space: PruningSpace,
        example_inputs: Sequence[torch.Tensor],
        data: Any = None,
        goal: Goal | None = None,
    ) -> nn.Module:
        """Search on a copy; `model` itself is returned unchanged (its kept channels seed recovery)."""
        goal = goal or Goal()
        if goal.cost_fraction is None:
            raise EdgepruneError("TAS searches toward the budget: give it the budget's cost fraction (compress does)")
        gating.require_channel_groups(space, self.name)
        order = {
            gid: np.argsort(-s, kind="stable").tolist()
            for gid, s in L1Importance().scores(model, space, example_inputs).items()
        }
        net = copy.deepcopy(model)
        # the depth mixture sums block outputs: blocks that return a tensor (not a tuple) only
        found = [b for b in blocks_mod.find_blocks(net, example_inputs) if not b.returns] if goal.depth != "off" else []
        runs = block_runs(net, found)
        search = _Search(net, space, example_inputs, order, runs, self.round_to, self.prior)
        if goal.depth == "only":  # widths stay whole: one candidate per group
            search.candidates = {gid: [c[-1]] for gid, c in search.candidates.items()}
            search.width_logits = nn.ParameterList([nn.Parameter(torch.zeros(1)) for _ in search.groups])
        cost = CostModel(net, space, example_inputs)
        target = goal.cost_fraction * cost.total
        history = self._search(search, cost, target, data)
        self.result = {
            "target_flops": target,
            "widths": {
                g.id: search.candidates[g.id][int(search.width_logits[i].argmax())] for i, g in enumerate(search.groups)
            },
            "order": order,
            "runs": [
                {
                    "blocks": r.blocks,
                    "choices": r.choices,
                    "keep": r.choices[int(search.depth_logits[k].argmax())],
                    "probs": search.depth_logits[k].softmax(-1).tolist(),
                }
                for k, r in enumerate(runs)
            ],
            "argmax_flops": search.argmax_flops(cost),
            "history": history,
        }
        return model

    def _search(self, search: _Search, cost: CostModel, target: float, data: Any) -> list[dict[str, float]]:
        """Alternate a weight step (SGD, task loss) and an architecture step (Adam, task + cost loss)."""
        arch_params = list(search.width_logits) + list(search.depth_logits)
        arch_opt = torch.optim.Adam(arch_params, lr=self.arch_lr, betas=(0.5, 0.999), weight_decay=1e-3)
        total = self.config.total_steps(len(data.train))
        arch_batches = _cycle(data.train)
        history: list[dict[str, float]] = []
        step = 0

        def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal step
            search.tau = self.tau[0] - (self.tau[0] - self.tau[1]) * step / max(total - 1, 1)
            ax, ay = next(arch_batches)
            search.arch_grad = True
            expected = search.expected_flops(cost)
            current = search.argmax_flops(cost)
            arch_loss = nn.functional.cross_entropy(search(ax), ay) + self.cost_weight * _cost_loss(
                expected, current, target
            )
            arch_opt.zero_grad(set_to_none=True)
            grads = torch.autograd.grad(arch_loss, arch_params, allow_unused=True)
            for p, g in zip(arch_params, grads):
                p.grad = g
            arch_opt.step()
            search.arch_grad = False
            if step % max(total // 20, 1) == 0 or step == total - 1:
                history.append(
                    {
                        "step": step,
                        "expected_flops": float(expected.detach()) / cost.total,
                        "argmax_flops": current / cost.total,
                        "tau": search.tau,
                    }
                )
            step += 1
            logits = net(x)
            return nn.functional.cross_entropy(logits, y), logits

        handles = search.hooks()
        try:
            with gating.channel_hooks(search.model, search.points, search.width):
                train(search, data.train, self.config, loss_fn, label="tas search")
        finally:
            for h in handles:
                h.remove()
        return history

    def scores(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None
    ) -> Scores:
        result = self.learned()
        out: Scores = {}
        for g in space.groups:
            width = result["widths"].get(g.id, g.size)
            rank = np.empty(g.size)
            rank[result["order"][g.id]] = np.arange(g.size)
            out[g.id] = width / g.size - (rank + 0.5) / g.size
        return out

    def block_scores(self, model: nn.Module, found: Sequence[blocks_mod.Block], data: Any) -> dict[str, float]:
        out = {b.name: 1.0 for b in found}  # blocks outside every run (none, normally) stay
        for run in self.result.get("runs", []):
            k = len(run["blocks"])
            for i, b in enumerate(run["blocks"], start=1):
                out[b] = (run["keep"] - i + 0.5) / k
        return out


def _cost_loss(expected: torch.Tensor, current: float, target: float) -> torch.Tensor:
    """The paper's cost loss: push E[FLOPs] down when the argmax architecture is over the target,
    up when it is more than TOLERANCE under, and leave it alone in between."""
    if current > target:
        return expected.log()
    if current < target * (1 - TOLERANCE):
        return -expected.log()
    return expected.new_zeros(())


def _cycle(loader: Any) -> Iterator[Any]:
    for epoch in itertools.count(1000):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
