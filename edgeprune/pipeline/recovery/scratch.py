"""Training the pruned architecture from scratch (Liu et al., "Rethinking the Value of Network
Pruning", ICLR 2019): the kept weights are discarded and the pruned shape is re-initialized, the
baseline that tells whether the pruned weights were worth keeping.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from edgeprune.pipeline.data import DataBundle
from edgeprune.pipeline.recovery.base import register
from edgeprune.pipeline.recovery.evaluate import Metric, top1
from edgeprune.pipeline.recovery.finetune import FineTune
from edgeprune.pipeline.recovery.trainer import TrainConfig, TrainResult


def reinitialize(model: nn.Module, seed: int = 0) -> None:
    """Every layer back to its constructor's initialization, at the pruned shape."""
    torch.manual_seed(seed)
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if reset is not None:
            reset()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()


@register
class Scratch(FineTune):
    """Fine-tuning's loop on re-initialized weights."""

    name = "scratch"
    default_lr = 0.1

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
        # always: a resumable checkpoint then overwrites every weight in train(), while a stale one
        # (another config) is ignored there and must not leave the pruned weights in place
        reinitialize(student, config.seed)
        return super().fit(student, teacher, data, config, metric, checkpoint, log)
