"""Recovery after pruning (`--recover`): fine-tune, distill from the unpruned model, scratch training,
or adversarial (PGD) fine-tuning."""

from edgeprune.pipeline.recovery import adversarial, distill, finetune, scratch  # noqa: F401  (registration)
from edgeprune.pipeline.recovery.base import Recovery, get_recovery, optimizer_for, recovery_names
from edgeprune.pipeline.recovery.evaluate import load_metric, top1
from edgeprune.pipeline.recovery.trainer import TrainConfig, TrainResult, train

__all__ = [
    "Recovery",
    "TrainConfig",
    "TrainResult",
    "get_recovery",
    "load_metric",
    "optimizer_for",
    "recovery_names",
    "top1",
    "train",
]
