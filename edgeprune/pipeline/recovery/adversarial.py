"""Adversarial fine-tuning (`--recover adversarial`): continue training the pruned weights on PGD
examples (Madry et al. 2018), so a model pruned for robustness (ANP) is recovered for robustness
too; the clean-loss recoveries would trade the robustness away again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from edgeprune.pipeline.data import DataBundle
from edgeprune.pipeline.recovery.base import Recovery, register
from edgeprune.pipeline.recovery.evaluate import Metric, top1
from edgeprune.pipeline.recovery.pgd import PGD, adversarial_loss
from edgeprune.pipeline.recovery.trainer import TrainConfig, TrainResult, train


@register
class AdversarialFineTune(Recovery):
    name = "adversarial"
    default_lr = 0.01

    def __init__(self, pgd_steps: int = 7, eps: float = 8 / 255, step: float = 2 / 255) -> None:
        self.options = {"steps": pgd_steps, "eps": eps, "step": step}

    def fit(
        self,
        student: nn.Module,
        teacher: nn.Module,
        data: DataBundle,
        config: TrainConfig,
        metric: Metric = top1,
        checkpoint: Path | None = None,
        log: Callable[[str], None] = print,
    ) -> TrainResult:
        loss = adversarial_loss(PGD.for_data(data, **self.options))
        return train(
            student,
            data.train,
            config,
            loss,
            val_loader=data.val,
            metric=metric,
            checkpoint=checkpoint,
            log=log,
            label=self.name,
        )
