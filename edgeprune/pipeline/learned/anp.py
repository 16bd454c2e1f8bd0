"""ANP (Madaan, Shin & Hwang, "Adversarial Neural Pruning with Latent Vulnerability Suppression",
ICML 2020; arXiv 2019 as "Adversarial Neural Pruning").

Pruning that keeps a network robust: channel masks are learned *jointly with adversarial
training* of the weights, and the features they let through are pushed to be insensitive to the
attack.

1. Masks: beta-Bernoulli dropout on the channels of every prunable group (Lee, Kim, Yang & Hwang,
   "Adaptive Network Sparsification with Dependent Variational Beta-Bernoulli Dropout", 2018).
   Channel k of a group keeps probability pi_k with a Beta(alpha, 1) prior (alpha small: sparse);
   the posterior q(pi_k) is a Kumaraswamy(a_k, b_k) (a reparameterizable stand-in for the Beta).
   Training samples pi ~ q once per batch and a relaxed-Bernoulli mask z ~ Bernoulli(pi) per image
   and channel; evaluation uses E_q[pi], zeroed below `threshold`. The masks act where a group's
   channels are produced (after BatchNorm, gating.py), so a residual stream is masked everywhere.
2. Loss, on PGD examples x' of each batch (pipeline/recovery/pgd.py):
   CE(f(x'), y) + vs_weight * VS + kl_weight * KL(q || prior) / N_train, where the vulnerability
   suppression term VS is the mean |h_l(x') - h_l(x)| over the masked features h_l (the paper's
   latent-feature vulnerability), with the same mask sample for x and x'. Weights (SGD) and mask
   parameters (Adam, `mask_lr`) are trained together on that loss.
3. The expected masks are folded into the weights (BN scale and shift times E[pi]), so the
   prepared network computes exactly what the masked one did; a channel whose mask reached 0 then
   outputs exactly 0 and removing it is lossless. Scores are E[pi], ranked globally: the budget
   search removes the zeroed channels first and, to meet a latency budget they do not meet alone,
   the least-kept ones after them. `--recover adversarial` (this method's default) fine-tunes the
   pruned model on PGD examples.

Departures from the paper, for short runs from a *trained* network: the masks start at E[pi] = 0.9
(`keep`) rather than the prior's sparse start; the KL term is the ELBO's per-example KL
(kl_weight 1), which over one or two epochs of CIFAR-10 barely pushes (the paper trains for
hundreds of epochs), so at such budgets the mask ranking comes mostly from the adversarial loss
and VS, and the latency budget, not the masks alone, decides how many channels go. The vs_weight
default (0.1) is not tuned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from edgeprune.pipeline.learned import gating
from edgeprune.pipeline.prune.methods.base import Goal, History, LearnedImportance, Scores, register
from edgeprune.pipeline.prune.space import PruningSpace
from edgeprune.pipeline.recovery.pgd import PGD
from edgeprune.pipeline.recovery.trainer import TrainConfig, train

_EULER = 0.5772156649015329


class BetaBernoulli(nn.Module):
    """Beta-Bernoulli dropout masks for the `size` channels of one group (parameters in log space,
    so Adam moves E[pi] between 0.9 and ~0 in a few hundred steps)."""

    def __init__(self, size: int, alpha: float, keep: float, temperature: float, threshold: float) -> None:
        super().__init__()
        # b = 1 gives E[pi] = a / (a + 1): a = keep / (1 - keep) starts every channel at `keep`
        self.log_a = nn.Parameter(torch.full((size,), math.log(keep / (1 - keep))))
        self.log_b = nn.Parameter(torch.zeros(size))
        self.alpha = alpha
        self.temperature = temperature
        self.threshold = threshold

    def sample(self, n: int) -> torch.Tensor:
        """A relaxed Bernoulli(pi) mask per image (n x size), pi ~ Kumaraswamy(a, b) per batch."""
        a, b = self.log_a.exp(), self.log_b.exp()
        u = torch.rand_like(a).clamp(1e-6, 1 - 1e-6)
        pi = (1 - u.pow(1 / b)).pow(1 / a).clamp(1e-6, 1 - 1e-6)
        v = torch.rand(n, len(a)).clamp(1e-6, 1 - 1e-6)
        return torch.sigmoid((pi.log() - (1 - pi).log() + v.log() - (1 - v).log()) / self.temperature)

    def expected(self) -> torch.Tensor:
        """E[pi] under Kumaraswamy(a, b): b * B(1 + 1/a, b)."""
        a, b = self.log_a.exp(), self.log_b.exp()
        return b * torch.exp(torch.lgamma(1 + 1 / a) + torch.lgamma(b) - torch.lgamma(1 + 1 / a + b))

    def mask(self) -> torch.Tensor:
        """The evaluation mask: E[pi], exactly 0 below the threshold."""
        e = self.expected()
        return e * (e >= self.threshold)

    def kl(self) -> torch.Tensor:
        """KL(Kumaraswamy(a, b) || Beta(alpha, 1)), summed over channels (Lee et al. 2018, eq. 9)."""
        a, b = self.log_a.exp(), self.log_b.exp()
        return (
            (1 - self.alpha / a) * (-_EULER - torch.digamma(b) - 1 / b)
            + (a * b).log()
            - math.log(self.alpha)
            - (b - 1) / b
        ).sum()


class _Masks(nn.Module):
    """One BetaBernoulli per group, the current batch's samples, and the features they produced."""

    def __init__(self, sizes: dict[str, int], **options: Any) -> None:
        super().__init__()
        self.index = {gid: i for i, gid in enumerate(sizes)}
        self.groups = nn.ModuleList([BetaBernoulli(n, **options) for n in sizes.values()])
        self.z: list[torch.Tensor] = []
        self.features: list[torch.Tensor] | None = None  # recording when a list

    def group(self, i: int) -> BetaBernoulli:
        return cast(BetaBernoulli, self.groups[i])

    def each(self) -> list[BetaBernoulli]:
        return [self.group(i) for i in range(len(self.groups))]

    def resample(self, n: int) -> None:
        self.z = [g.sample(n) for g in self.each()]

    # not `apply`: that name is nn.Module's (module.apply(fn) recurses into children with one argument)
    def masked(self, point: gating.HookPoint, out: torch.Tensor, training: bool) -> torch.Tensor:
        i = self.index[point.group]
        masked = out * (point.per_sample(self.z[i], out) if training else point.along(self.group(i).mask(), out))
        if self.features is not None:
            self.features.append(masked)
        return masked

    def record(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`model(x)` and the masked features of that pass."""
        self.features = []
        try:
            return model(x), self.features
        finally:
            self.features = None


@register
class ANP(LearnedImportance):
    name = "anp"
    reference = "Madaan, Shin & Hwang, Adversarial Neural Pruning with Latent Vulnerability Suppression, ICML 2020"
    ranking = "global"
    needs_data = True
    default_recovery = "adversarial"

    def __init__(
        self,
        epochs: int | None = None,
        steps: int | None = None,
        lr: float = 0.01,
        mask_lr: float = 0.02,
        pgd_steps: int = 7,
        eps: float = 8 / 255,
        step: float = 2 / 255,
        vs_weight: float = 0.1,
        kl_weight: float = 1.0,
        alpha: float = 1e-4,
        keep: float = 0.9,
        temperature: float = 0.1,
        threshold: float = 1e-3,
    ) -> None:
        super().__init__()
        self.config = TrainConfig.budget(epochs, steps, lr=lr)
        self.mask_lr = mask_lr
        self.pgd_options = {"steps": pgd_steps, "eps": eps, "step": step}
        self.vs_weight = vs_weight
        self.kl_weight = kl_weight
        self.mask_options = {"alpha": alpha, "keep": keep, "temperature": temperature, "threshold": threshold}

    def prepare(
        self,
        model: nn.Module,
        space: PruningSpace,
        example_inputs: Sequence[torch.Tensor],
        data: Any = None,
        goal: Goal | None = None,
    ) -> nn.Module:
        """Adversarial training of `model` in place with the masks; returns it with the masks folded in."""
        gating.require_channel_groups(space, self.name)
        pgd = PGD.for_data(data, **self.pgd_options)
        points = gating.hook_points(model, space, example_inputs)
        masks = _Masks({g.id: g.size for g in space.groups}, **self.mask_options)
        n_train = data.train.num_samples  # a BatchLoader: PGD.for_data refused any other loader
        history = History(self.config.total_steps(len(data.train)))

        def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            adv = pgd.attack(getattr(net, "module", net), x, y)
            masks.resample(len(x))
            logits, f_adv = masks.record(net, adv)
            _, f_clean = masks.record(net, x)
            vs = torch.stack([(a - c).abs().mean() for a, c in zip(f_adv, f_clean)]).mean()
            kl = sum(g.kl() for g in masks.each()) / n_train
            ce = nn.functional.cross_entropy(logits, y)
            history.tick(lambda: self._snapshot(masks, ce, vs, kl))
            return ce + self.vs_weight * vs + self.kl_weight * kl, logits

        side = torch.optim.Adam(masks.parameters(), lr=self.mask_lr)
        with gating.channel_hooks(model, points, lambda p, out: masks.masked(p, out, model.training)):
            train(model, data.train, self.config, loss_fn, label="anp adversarial", side_optimizer=side)
        with torch.no_grad():
            keep = {gid: masks.group(i).mask() for gid, i in masks.index.items()}
        gating.fold(model, points, keep)
        self.result = {
            "keep": {gid: v.tolist() for gid, v in keep.items()},
            "zeroed": {gid: int((v == 0).sum()) for gid, v in keep.items()},
            "zeroed_total": int(sum((v == 0).sum() for v in keep.values())),
            "units_total": int(sum(len(v) for v in keep.values())),
            "attack": {"eps": pgd.eps, "step": pgd.step, "steps": pgd.steps},
            "history": history.rows,
        }
        return model

    @staticmethod
    def _snapshot(masks: _Masks, ce: torch.Tensor, vs: torch.Tensor, kl: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            keep = torch.cat([g.mask() for g in masks.each()])
        return {
            "adv_ce": float(ce.detach()),
            "vs": float(vs.detach()),
            "kl": float(kl.detach()),
            "mean_keep": float(keep.mean()),
            "zeroed": int((keep == 0).sum()),
        }

    def scores(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None
    ) -> Scores:
        return {g.id: np.asarray(self.learned()["keep"][g.id]) for g in space.groups}
