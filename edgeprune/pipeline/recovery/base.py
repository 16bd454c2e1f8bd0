"""The `Recovery` interface: bring a pruned model's accuracy back.

`fit(student, teacher, data, config)` trains the pruned `student` in place; `teacher` is the
unpruned model (used by distillation, ignored by the others). Each method is one file.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from torch import nn

from edgeprune.pipeline.data import DataBundle
from edgeprune.pipeline.recovery.evaluate import Metric, top1
from edgeprune.pipeline.recovery.trainer import TrainConfig, TrainResult
from edgeprune.registry import Registry


class Recovery(abc.ABC):
    name: ClassVar[str] = ""
    #: the learning rate the method's paper or common practice uses when the user gives none
    default_lr: ClassVar[float] = 0.01

    @abc.abstractmethod
    def fit(
        self,
        student: nn.Module,
        teacher: nn.Module,
        data: DataBundle,
        config: TrainConfig,
        metric: Metric = top1,
        checkpoint: Path | None = None,
        log: Callable[[str], None] = print,
    ) -> TrainResult: ...

    def scale_free_loss(self, teacher: nn.Module, data: DataBundle) -> bool:
        """Whether this recovery's loss on `data` has no task's scale (its terms normalised by the
        teacher's spread), so that the optimiser must not step by the gradient's size (`optimizer_for`)."""
        return False


#: AdamW's learning rate and weight decay for attention models when no --lr is given: the range
#: BERT-style fine-tuning and distillation use. SGD at the CNNs' 0.01 diverged on small transformers
#: (agreement 0.98 -> 0.72 on a random-weight 2-layer BERT; a 3-layer RoBERTa recovered to 0.00)
ADAMW_LR = 1e-4
ADAMW_WEIGHT_DECAY = 0.01
#: AdamW's rate for other models whose recovery loss is scale-free (`Recovery.scale_free_loss`: label-free
#: distillation of outputs that are not class logits, a detector's). That loss is a mean of terms
#: normalised by the teacher's own spread, its gradients small (global norm 0.13-0.19 on a pruned
#: YOLOv8n), and SGD's step, unlike AdamW's, scales with them. On bench/yolo_distill.py's plan, 10
#: epochs (teacher mAP50-95 0.304): SGD at 0.01 0.159, 0.1 0.229, 0.3 0.247; AdamW at 1e-3 0.227, 3e-3
#: 0.246, 1e-2 0.237; 30 epochs: AdamW 3e-3 0.277 (SGD 0.01: 0.195 in a compress run). Not for class
#: logits, whose T^2-scaled KL has a task loss's scale: the demo's pruned ResNet-20 distilled without
#: labels, 20 epochs, top-1 0.860 with SGD at 0.01 and 0.834 with AdamW at 3e-3
SCALE_FREE_LR = 3e-3


@dataclasses.dataclass(frozen=True)
class OptimizerChoice:
    """The optimiser recovery trains with, its rate, its weight decay and why (stated in the report)."""

    optimizer: str  # "sgd" | "adamw"
    lr: float
    weight_decay: float
    why: str


def is_attention_model(model: nn.Module) -> bool:
    """Layer norms (LayerNorm, RMSNorm, by class name for the libraries' own) and no batch norm:
    a transformer, whose recovery wants AdamW, not the SGD that suits convolutional networks."""
    names = [type(m).__name__ for m in model.modules()]
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return not batch_norm and any(n.endswith(("LayerNorm", "RMSNorm")) for n in names)


def optimizer_for(model: nn.Module, recovery: Recovery, lr: float | None, scale_free: bool = False) -> OptimizerChoice:
    """AdamW at `ADAMW_LR` for attention models; AdamW at `SCALE_FREE_LR` for the others when their
    recovery loss is scale-free (`Recovery.scale_free_loss`); SGD at the recovery's own rate otherwise.
    A given `lr` (--lr) replaces the rate, not the optimiser."""
    if is_attention_model(model):
        return OptimizerChoice(
            "adamw",
            lr or ADAMW_LR,
            ADAMW_WEIGHT_DECAY,
            "AdamW: an attention model (layer norms, no batch norm), where SGD at a CNN's rate diverges",
        )
    if scale_free:
        return OptimizerChoice(
            "adamw",
            lr or SCALE_FREE_LR,
            ADAMW_WEIGHT_DECAY,
            "AdamW: distillation without labels of outputs that are not class logits, whose loss (terms "
            "normalised by the teacher's spread) has gradients too small for SGD at a CNN's rate",
        )
    return OptimizerChoice(
        "sgd",
        lr or recovery.default_lr,
        TrainConfig.weight_decay,
        "SGD with Nesterov momentum: a convolutional or batch-normalised model",
    )


RECOVERIES: Registry[Recovery] = Registry("recovery")
register = RECOVERIES.register
get_recovery = RECOVERIES.create
recovery_names = RECOVERIES.names
