"""L-infinity PGD (Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant
to Adversarial Attacks", ICLR 2018): the attack, robust accuracy, and the adversarial training loss.

The budget (eps 8/255, step 2/255 by default, the CIFAR-10 convention) is in *pixel* units on
[0, 1] images, but the models here take normalized inputs ((x - mean) / std, pipeline/data). The
attack therefore un-normalizes a batch, perturbs and clips the pixels to [0, 1] and to the eps-ball
around the clean pixels, and normalizes again before every forward pass: a budget applied to the
normalized tensor directly would be 1/std (about 4x) larger than stated and would leave the valid
pixel range.

The attack runs the model in eval mode (BatchNorm's running statistics, a masked model's
deterministic masks): it attacks the network that would be deployed, and its k extra forward
passes do not disturb the BatchNorm statistics being trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.data import Normalization
from edgeprune.pipeline.recovery.trainer import LossFn


@dataclasses.dataclass(frozen=True)
class PGD:
    normalization: Normalization
    eps: float = 8 / 255
    step: float = 2 / 255
    steps: int = 7  # Madry et al.'s CIFAR-10 training attack; evaluation usually uses more
    random_start: bool = True

    @classmethod
    def for_data(cls, data: Any, **options: Any) -> PGD:
        """The attack for a DataBundle, whose normalization says where the pixel range is."""
        if getattr(data, "normalization", None) is None:
            raise EdgepruneError(
                "an adversarial attack needs the images' pixel range; pass --data as an .npz or an image folder "
                "(a module:function loader does not say how its inputs were normalized)"
            )
        return cls(data.normalization, **options)

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial versions of the normalized inputs `x` (labels `y`), normalized like them."""
        mean, std = self._stats(x)
        pixels = x.detach() * std + mean
        delta = (
            torch.empty_like(pixels).uniform_(-self.eps, self.eps) if self.random_start else torch.zeros_like(pixels)
        )
        delta = (pixels + delta).clamp(0, 1) - pixels
        was_training = model.training
        model.eval()
        try:
            for _ in range(self.steps):
                delta.requires_grad_(True)
                loss = nn.functional.cross_entropy(model((pixels + delta - mean) / std), y)
                (grad,) = torch.autograd.grad(loss, delta)
                delta = (delta.detach() + self.step * grad.sign()).clamp(-self.eps, self.eps)
                delta = (pixels + delta).clamp(0, 1) - pixels
        finally:
            model.train(was_training)
        return ((pixels + delta - mean) / std).detach()

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized inputs back to [0, 1] pixels (to check a perturbation's size)."""
        mean, std = self._stats(x)
        return x * std + mean

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (
            torch.tensor(self.normalization.mean, dtype=x.dtype).view(shape),
            torch.tensor(self.normalization.std, dtype=x.dtype).view(shape),
        )


def robust_top1(model: nn.Module, loader: Iterable[Any], pgd: PGD, limit: int | None = None) -> float:
    """Top-1 accuracy in [0, 1] on PGD examples of the first `limit` images of `loader` (all by default)."""
    correct = total = 0
    for x, y in loader:
        if limit is not None:
            x, y = x[: limit - total], y[: limit - total]
        adv = pgd.attack(model, x, y)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == y).sum())
        model.train(was_training)
        total += len(y)
        if limit is not None and total >= limit:
            break
    if total == 0:
        raise EdgepruneError("the validation data is empty; nothing to attack")
    return correct / total


def adversarial_loss(pgd: PGD) -> LossFn:
    """Madry et al.'s adversarial training: the task loss on PGD examples of each batch."""

    def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = net(pgd.attack(getattr(net, "module", net), x, y))
        return nn.functional.cross_entropy(logits, y), logits

    return loss_fn
