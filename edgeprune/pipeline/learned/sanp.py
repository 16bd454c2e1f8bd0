"""SANP (Chen, Wang, Zhang, Zhao & Ling, "Self-Adaptive Network Pruning", ICONIP 2019).

Dynamic, per-image channel pruning: a Saliency-and-Pruning Module (SPM) per prunable channel group
reads the input of the layer that produces the group's channels, global-average-pools it, and a
two-layer MLP predicts one saliency logit per channel; the channel is computed for that image only
when its decision is 1. The decisions are binary in the forward pass and trained through a
straight-through Gumbel (logistic-noise) sigmoid; weights (SGD) and SPMs (Adam, `spm_lr`) are
trained jointly on the task loss plus the cost objective
`cost_weight * max(0, E[MACs] / MACs_unpruned - target)`, E[MACs] being the expected per-image
MACs under the SPMs' keep probabilities (CostModel.expected_flops, the search's exact per-layer
MACs) plus the SPMs' own, and `target` the budget's cost fraction (Goal) unless given.

Which model is exported, and why: the **static** one. The runtimes this tool measures on (ORT,
OpenVINO, TensorRT, ExecuTorch) execute static graphs; skipping channels image by image needs
data-dependent shapes or gathers that none of them turn into saved time at batch 1, so the dynamic
saving would exist only on paper. The dynamic model is therefore trained and *measured in PyTorch*
(`DynamicNet`, `measure_dynamic`: average MACs saved per image and top-1 on the validation data,
recorded in the method's state, i.e. the report's method section), and the static export keeps, per
group, the channels the SPMs keep most often: scores are each channel's keep frequency over
calibration images (ties broken by the mean keep probability), ranked globally, and the budget
search then meets the *measured* latency like every other method.

Simplifications: the paper gates each conv layer; here a group shared by several layers (a
residual stream) gets one decision per image, taken by the SPM of the first of its producers to
run (for a ResNet's stage stream: the stem's input, i.e. the image's mean colour), so stream
decisions vary little by image. The SPMs and DynamicNet live in the process that ran `prepare`;
a resumed run keeps their measurements (in the state), not the SPMs themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.learned import gating
from edgeprune.pipeline.prune.graph import ROOT_TYPES, Graph
from edgeprune.pipeline.prune.methods.base import Goal, History, LearnedImportance, Scores, register
from edgeprune.pipeline.prune.space import PruningSpace
from edgeprune.pipeline.recovery.trainer import TrainConfig, train
from edgeprune.pipeline.search.cost_model import CostModel

_BN = nn.modules.batchnorm._BatchNorm


def sources(
    model: nn.Module, points: Sequence[gating.HookPoint], example_inputs: Sequence[torch.Tensor]
) -> dict[str, list[str]]:
    """Per group, the layers whose *input* decides its channels: the Conv/Linear that computes them
    (the one before a hooked BatchNorm), so a decision is known before the channel is computed."""
    graph = Graph(model, example_inputs)
    out: dict[str, list[str]] = {}
    for p in points:
        name = p.layer
        if isinstance(model.get_submodule(name), _BN):
            feeding = [n for n in graph.inputs_of(name) if isinstance(model.get_submodule(n), ROOT_TYPES)]
            name = feeding[0] if feeding else name
        out.setdefault(p.group, []).append(name)
    return out


def _pool(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, channels): the mean over every other axis (a conv's space, a Linear's tokens)."""
    moved = x.movedim(dim, -1)
    return moved.reshape(len(x), -1, moved.shape[-1]).mean(1)


class DynamicNet(nn.Module):
    """The dynamic model: `net` with an SPM per channel group deciding, image by image, which of the
    group's channels are computed (the others are zeroed; a kernel that skips them saves their MACs).
    Stochastic straight-through decisions while `net` trains, hard ones (logit > 0) in eval mode."""

    def __init__(
        self,
        net: nn.Module,
        points: Sequence[gating.HookPoint],
        sources: dict[str, list[str]],
        sizes: dict[str, int],
        example_inputs: Sequence[torch.Tensor],
        hidden: int,
        tau: float,
        init_logit: float,
    ) -> None:
        super().__init__()
        self.net = net
        self.points = list(points)
        self.sources = sources
        self.groups = list(sources)
        self.tau = tau
        widths = self._input_widths(example_inputs)
        self.spms = nn.ModuleList()
        for gid in self.groups:
            spm = nn.Sequential(nn.Linear(widths[gid], hidden), nn.ReLU(), nn.Linear(hidden, sizes[gid]))
            # every channel kept at the start: the trained network
            nn.init.constant_(cast(nn.Linear, spm[2]).bias, init_logit)
            self.spms.append(spm)
        #: the SPMs' own MACs per image
        self.spm_macs = float(sum(widths[g] * hidden + hidden * sizes[g] for g in self.groups))
        self.probs: dict[str, torch.Tensor] = {}  # per group: (batch, units) keep probabilities of this pass
        self.decisions: dict[str, torch.Tensor] = {}

    def _input_widths(self, example_inputs: Sequence[torch.Tensor]) -> dict[str, int]:
        """The channel count of the input each group's SPM reads (the first of its sources to run)."""
        seen: dict[str, int] = {}
        with (
            self._hooks(lambda gid, name, x: seen.setdefault(gid, x.shape[self._dim(name)]), gate=False),
            torch.no_grad(),
        ):
            was_training = self.net.training
            self.net.eval()
            self.net(*example_inputs)
            self.net.train(was_training)
        return seen

    def _dim(self, name: str) -> int:
        return -1 if isinstance(self.net.get_submodule(name), nn.Linear) else 1

    def _decide(self, gid: str, name: str, x: torch.Tensor) -> None:
        if gid in self.decisions:  # decided by an earlier producer of the same group in this pass
            return
        logits = self.spms[self.groups.index(gid)](_pool(x, self._dim(name)))
        self.probs[gid] = torch.sigmoid(logits)
        if self.net.training:
            u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((logits + u.log() - (1 - u).log()) / self.tau)
            self.decisions[gid] = (soft > 0.5).to(soft.dtype) - soft.detach() + soft
        else:
            self.decisions[gid] = (logits > 0).to(logits.dtype)

    @contextlib.contextmanager
    def _hooks(self, on_input: Any, gate: bool = True) -> Iterator[None]:
        def pre_hook(gid: str, name: str) -> Any:
            def run(mod: nn.Module, args: tuple) -> None:
                on_input(gid, name, args[0])

            return run

        handles = [
            self.net.get_submodule(name).register_forward_pre_hook(pre_hook(gid, name))
            for gid, names in self.sources.items()
            for name in names
        ]
        try:
            if gate:
                with gating.channel_hooks(
                    self.net, self.points, lambda p, out: out * p.per_sample(self.decisions[p.group], out)
                ):
                    yield
            else:
                yield
        finally:
            for h in handles:
                h.remove()

    def forward(self, *args: Any) -> Any:
        self.probs, self.decisions = {}, {}
        with self._hooks(self._decide):
            return self.net(*args)

    def kept_macs(self, cost: CostModel, soft: bool) -> torch.Tensor:
        """Per image of the last pass, its MACs (with the SPMs'): under the keep probabilities
        (`soft`, differentiable: the cost objective) or the hard decisions (what was computed)."""
        per = self.probs if soft else self.decisions
        return cost.expected_flops({gid: v.mean(1) for gid, v in per.items()}) + self.spm_macs


@torch.no_grad()
def measure_dynamic(
    dyn: DynamicNet, cost: CostModel, loader: Iterable[Any], limit: int | None = None
) -> dict[str, Any]:
    """The dynamic model's average MACs per image (hard decisions, SPMs included) relative to the
    unpruned network's, and its top-1, over the first `limit` images of `loader`."""
    was_training = dyn.net.training
    dyn.net.eval()
    macs: list[torch.Tensor] = []
    correct = seen = 0
    try:
        for x, y in loader:
            if limit is not None:
                x, y = x[: limit - seen], y[: limit - seen]
            correct += int((dyn(x).argmax(1) == y).sum())
            macs.append(torch.as_tensor(dyn.kept_macs(cost, soft=False)).expand(len(x)))
            seen += len(y)
            if limit is not None and seen >= limit:
                break
    finally:
        dyn.net.train(was_training)
    per_image = torch.cat(macs) / cost.total
    return {
        "images": seen,
        "top1": correct / max(seen, 1),
        "macs_fraction_mean": float(per_image.mean()),
        "macs_saved_mean": float(1 - per_image.mean()),
        "macs_fraction_min": float(per_image.min()),
        "macs_fraction_max": float(per_image.max()),
        "spm_macs_fraction": dyn.spm_macs / cost.total,
    }


@register
class SANP(LearnedImportance):
    name = "sanp"
    reference = "Chen et al., Self-Adaptive Network Pruning, ICONIP 2019"
    ranking = "global"
    needs_data = True

    def __init__(
        self,
        epochs: int | None = None,
        steps: int | None = None,
        lr: float = 0.01,
        spm_lr: float = 0.01,
        cost_weight: float = 2.0,
        target: float | None = None,
        hidden: int = 16,
        tau: float = 1.0,
        init_logit: float = 3.0,
        calibration: int = 512,
        eval_images: int | None = None,
    ) -> None:
        super().__init__()
        self.config = TrainConfig.budget(epochs, steps, lr=lr)
        self.spm_lr = spm_lr
        self.cost_weight = cost_weight
        self.target = target
        self.spm: dict[str, Any] = {"hidden": hidden, "tau": tau, "init_logit": init_logit}
        self.calibration = calibration
        self.eval_images = eval_images
        self.dynamic: DynamicNet | None = None

    def prepare(
        self,
        model: nn.Module,
        space: PruningSpace,
        example_inputs: Sequence[torch.Tensor],
        data: Any = None,
        goal: Goal | None = None,
    ) -> nn.Module:
        """Train `model` in place jointly with the SPMs; the dynamic model stays in `self.dynamic`."""
        gating.require_channel_groups(space, self.name)
        target = self.target if self.target is not None else (goal.cost_fraction if goal else None)
        if target is None:
            raise EdgepruneError(
                "SANP's cost objective needs a target: give the method target=FRACTION (compress passes the budget's)"
            )
        points = gating.hook_points(model, space, example_inputs)
        dyn = DynamicNet(
            model,
            points,
            sources(model, points, example_inputs),
            {g.id: g.size for g in space.groups},
            example_inputs,
            **self.spm,
        )
        cost = CostModel(model, space, example_inputs)
        history = History(self.config.total_steps(len(data.train)))

        def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = dyn(x)
            fraction = dyn.kept_macs(cost, soft=True).mean() / cost.total
            ce = nn.functional.cross_entropy(logits, y)
            history.tick(lambda: {"ce": float(ce.detach()), "expected_macs_fraction": float(fraction.detach())})
            return ce + self.cost_weight * torch.relu(fraction - target), logits

        side = torch.optim.Adam(dyn.spms.parameters(), lr=self.spm_lr)
        train(model, data.train, self.config, loss_fn, label="sanp", side_optimizer=side)
        freq, prob = self._statistics(dyn, data.calibration(self.calibration))
        self.dynamic = dyn
        self.result = {
            "exported": "static",
            "why": "the target runtimes execute static graphs, where per-image channel skipping saves no time; the "
            "static widths keep the channels the SPMs keep most often, and the dynamic saving is measured in PyTorch",
            "target": target,
            "dynamic": measure_dynamic(dyn, cost, data.val, self.eval_images),
            "keep_frequency": {gid: f.tolist() for gid, f in freq.items()},
            # frequency first; the mean keep probability only orders channels of equal frequency
            "scores": {gid: (freq[gid] + 1e-3 * prob[gid]).tolist() for gid in freq},
            "history": history.rows,
        }
        return model

    @staticmethod
    @torch.no_grad()
    def _statistics(dyn: DynamicNet, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per channel: how often the SPMs keep it (hard decisions) and its mean keep probability."""
        was_training = dyn.net.training
        dyn.net.eval()
        try:
            dyn(images)
        finally:
            dyn.net.train(was_training)
        return ({gid: d.mean(0) for gid, d in dyn.decisions.items()}, {gid: p.mean(0) for gid, p in dyn.probs.items()})

    def scores(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None
    ) -> Scores:
        return {g.id: np.asarray(self.learned()["scores"][g.id]) for g in space.groups}
