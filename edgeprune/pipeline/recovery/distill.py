"""Knowledge distillation from the unpruned model (Hinton, Vinyals & Dean 2015), the recovery the
TAS paper (Dong & Yang 2019) uses for searched networks.

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y).
The T^2 factor keeps the soft-target gradients on the scale of the hard-label ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.pipeline.data import DataBundle
from edgeprune.pipeline.recovery.base import Recovery, register
from edgeprune.pipeline.recovery.evaluate import Metric, top1
from edgeprune.pipeline.recovery.trainer import TrainConfig, TrainResult, train


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1), reduction="batchmean")
    return alpha * t * t * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


@register
class Distill(Recovery):
    name = "distill"
    default_lr = 0.01

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9) -> None:
        self.temperature = temperature
        self.alpha = alpha

    def fit(self, student: nn.Module, teacher: nn.Module, data: DataBundle, config: TrainConfig,
            metric: Metric = top1, checkpoint: Path | None = None, log: Callable[[str], None] = print) -> TrainResult:
        teacher.eval()

        def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                t_logits = teacher(x)
            logits = model(x)
            return kd_loss(logits, t_logits, y, self.temperature, self.alpha), logits

        return train(student, data.train, config, loss_fn, data.val, metric, checkpoint, log, label=self.name)
