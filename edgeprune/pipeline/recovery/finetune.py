"""Fine-tuning: continue training the pruned weights with the task loss (Li et al. 2017's recovery)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from edgeprune.pipeline.data import DataBundle
from edgeprune.pipeline.recovery.base import Recovery, register
from edgeprune.pipeline.recovery.evaluate import Metric, top1
from edgeprune.pipeline.recovery.trainer import TrainConfig, TrainResult, train


@register
class FineTune(Recovery):
    name = "finetune"
    default_lr = 0.01

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
        return train(
            student,
            data.train,
            config,
            val_loader=data.val,
            metric=metric,
            checkpoint=checkpoint,
            log=log,
            label=self.name,
        )
