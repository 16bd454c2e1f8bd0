"""The `Recovery` interface: bring a pruned model's accuracy back.

`fit(student, teacher, data, config)` trains the pruned `student` in place; `teacher` is the
unpruned model (used by distillation, ignored by the others). Each method is one file.
"""

from __future__ import annotations

import abc
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


RECOVERIES: Registry[Recovery] = Registry("recovery")
register = RECOVERIES.register
get_recovery = RECOVERIES.create
recovery_names = RECOVERIES.names
