"""The one training loop: baseline training, fine-tuning, distillation and scratch training.

SGD with momentum and weight decay (or AdamW, for attention models) under a cosine or one-cycle
schedule, budgeted in epochs or optimizer steps. With `keep_best` (recovery) the starting weights
are evaluated too and the best epoch's weights are what the model holds at the end, so a recovery
that diverges hands back the pruned model it started from, never something worse; it stops once
the metric has stayed under the starting weights' for `patience` epochs. A checkpoint is written (atomically) after
every epoch and an interrupted run resumes from it. Under `torchrun` the model is wrapped in
DistributedDataParallel, each rank reads its shard of the data, and only rank 0 writes checkpoints
and prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from edgeprune import atomic, modelrun
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.recovery.evaluate import Metric, top1

#: loss(model, inputs, labels) -> (loss, outputs): logits for a classifier, any output structure otherwise
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]]


@dataclasses.dataclass
class TrainConfig:
    epochs: int | None = None
    steps: int | None = None  # optimizer steps; takes precedence over epochs when given
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" | "onecycle"
    seed: int = 0
    #: the gradients' global norm is clipped to this (None: not clipped); label-free distillation's
    #: per-channel terms weigh a near-constant channel heavily, and its first steps can spike
    grad_clip: float | None = None
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) | "adamw" (`optimizer_for`: attention, no-label detectors)
    #: evaluate the starting weights too and end on the best epoch's weights (epoch 0: the starting ones)
    keep_best: bool = False
    #: with `keep_best`, the epochs in a row worse than the starting weights after which training stops
    patience: int = 3

    @classmethod
    def budget(cls, epochs: int | None, steps: int | None, **settings: Any) -> TrainConfig:
        """A config training for `steps` when given, else `epochs`, else one epoch: the default
        budget of every method that trains and of recovery."""
        return cls(epochs=epochs if (epochs or steps) else 1, steps=steps, **settings)

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.steps:
            return self.steps
        if self.epochs:
            return self.epochs * steps_per_epoch
        raise EdgepruneError("give a training budget: --epochs N or --steps N")


@dataclasses.dataclass
class TrainResult:
    history: list[dict[str, Any]]
    resumed_from_epoch: int = 0
    #: with `keep_best`: the epoch whose weights the model holds (0: the starting ones), its metric and why
    kept: dict[str, Any] | None = None

    @property
    def final_metric(self) -> float | None:
        """The metric of the weights the model holds: the kept epoch's, else the last epoch's."""
        if self.kept is not None:
            return self.kept["metric"]
        return self.history[-1].get("val_metric") if self.history else None


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = modelrun.first_output(modelrun.call(model, x))
    return nn.functional.cross_entropy(logits, y), logits


#: fewer steps per epoch than this and the log suggests a smaller batch (a YOLOv8n distilled from
#: 800 images at batch 128 took 60 steps in 10 epochs and kept mAP50-95 at 0.000; at 16, 0.038)
FEW_STEPS = 20


def train_all(model: nn.Module) -> None:
    """Every module in training mode: the default for training."""
    model.train()


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def train(
    model: nn.Module,
    train_loader: Iterable[Any],
    config: TrainConfig,
    loss_fn: LossFn = cross_entropy,
    val_loader: Iterable[Any] | None = None,
    metric: Metric = top1,
    checkpoint: Path | None = None,
    log: Callable[[str], None] = print,
    label: str = "train",
    side_optimizer: torch.optim.Optimizer | None = None,
    train_mode: Callable[[nn.Module], None] = train_all,
) -> TrainResult:
    """Train `model` in place; returns the per-epoch history (loss, train accuracy, val metric).

    `side_optimizer` steps parameters kept outside `model` (a learned method's masks or saliency
    modules) on the same loss, with their own optimizer and learning rate: SGD at the fine-tuning
    rate barely moves them within the few hundred steps a method is given. `train_mode` sets the
    modules' modes before each step (distillation keeps all but batch norm in eval
    mode, so a detector's head returns what the teacher's returns)."""
    torch.manual_seed(config.seed)
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    if steps_per_epoch == 0:
        raise EdgepruneError("the training data is empty; point --data at training images")
    if steps_per_epoch < FEW_STEPS and is_rank0():
        log(
            f"[{label}] note: {steps_per_epoch} steps per epoch at this batch size; with little data a smaller "
            "--batch-size trains more steps in the same epochs"
        )
    was_training = model.training  # restored at the end: a model given in eval mode comes back in eval mode
    # A checkpoint saved frozen (nothing requires grad) is trained whole, its flags restored at the
    # end; a model with some parts frozen keeps them frozen, as its user chose.
    with contextlib.ExitStack() as stack:
        if not any(p.requires_grad for p in model.parameters()):
            stack.enter_context(modelrun.trainable(model))
        history, start_epoch, kept = _train(
            model, train_loader, config, loss_fn, val_loader, metric, checkpoint, log, label, side_optimizer, train_mode
        )
    model.train(was_training)
    return TrainResult(history, start_epoch, kept)


class _Best:
    """The best weights seen while training (`TrainConfig.keep_best`): the starting ones count as
    epoch 0. A later epoch that ties the best replaces it (it trained further toward the target at
    no loss on the metric); a NaN metric never counts as better. Training is exhausted after
    `patience` epochs in a row worse than the starting weights: a recovery that went wrong. A
    plateau is not (the demo's distillation sat within a point of 0.72 for four epochs of its 30,
    then rose to 0.77 as the cosine schedule's rate fell)."""

    def __init__(self, higher_is_better: bool, patience: int) -> None:
        self.higher, self.patience = higher_is_better, patience
        self.epoch, self.metric, self.start, self.stale = 0, math.nan, math.nan, 0
        self.state: dict[str, torch.Tensor] = {}

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.higher else a < b

    def offer(self, epoch: int, metric: float, model: nn.Module) -> None:
        first = not self.state
        if first:
            self.start = metric
        if first or self._better(metric, self.metric) or metric == self.metric:
            self.epoch, self.metric = epoch, metric
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        worse = not first and not (metric == self.start or self._better(metric, self.start))  # a NaN is worse
        self.stale = self.stale + 1 if worse else 0

    @property
    def exhausted(self) -> bool:
        return self.stale >= self.patience

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "metric": self.metric,
            "start": self.start,
            "state": self.state,
            "stale": self.stale,
        }

    def load(self, d: dict[str, Any]) -> None:
        self.epoch, self.metric, self.start, self.state, self.stale = (
            d["epoch"],
            d["metric"],
            d["start"],
            d["state"],
            d["stale"],
        )

    def restore(self, model: nn.Module, history: list[dict[str, Any]], stopped: bool) -> dict[str, Any]:
        """Load the best weights into `model`; what was kept and why, for the report."""
        last = history[-1]["val_metric"] if history else self.metric
        if history and self.epoch == history[-1]["epoch"]:
            why = "the last epoch's weights: the best on the held-out metric"
        else:
            model.load_state_dict(self.state)
            what = "the starting weights" if self.epoch == 0 else f"epoch {self.epoch}'s weights"
            why = f"{what}: the best on the held-out metric ({self.metric:.4g}; the last epoch read {last:.4g})"
        if stopped:
            why += f"; stopped after {self.patience} epochs in a row worse than the starting weights"
        return {"epoch": self.epoch, "metric": self.metric, "last_metric": last, "stopped_early": stopped, "why": why}


def _train(
    model: nn.Module,
    train_loader: Iterable[Any],
    config: TrainConfig,
    loss_fn: LossFn,
    val_loader: Iterable[Any] | None,
    metric: Metric,
    checkpoint: Path | None,
    log: Callable[[str], None],
    label: str,
    side_optimizer: torch.optim.Optimizer | None,
    train_mode: Callable[[nn.Module], None],
) -> tuple[list[dict[str, Any]], int, dict[str, Any] | None]:
    """`train`'s loop; returns the history, the epoch it resumed from and what `keep_best` kept."""
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    total = config.total_steps(steps_per_epoch)
    epochs = math.ceil(total / steps_per_epoch)
    net = _wrap(model)
    opt = _optimizer(model, config)
    sched = _schedule(opt, config, total)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    best = _Best(getattr(metric, "higher_is_better", True), config.patience) if config.keep_best else None
    if best is not None and val_loader is None:
        best = None  # nothing held out to choose on
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state.get("config") == dataclasses.asdict(config) and state.get("total") == total:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            history, start_epoch = state["history"], state["epoch"] + 1
            if best is not None and state.get("best"):
                best.load(state["best"])
            log(f"[{label}] resumed from {checkpoint} after epoch {start_epoch}/{epochs}")
    if best is not None and start_epoch == 0:
        assert val_loader is not None
        best.offer(0, metric(model, val_loader), model)
        if is_rank0():
            log(f"[{label}] before training: val {best.metric:.4f}")
    stopped = False
    step = start_epoch * steps_per_epoch
    with _progress(label) as bar:
        task = bar.add_task(label, total=total, completed=step, loss=float("nan"), acc=float("nan"))
        for epoch in range(start_epoch, epochs):
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            t0 = time.perf_counter()
            loss_sum = correct = seen = counted = 0.0
            for x, y in train_loader:
                if step >= total:
                    break
                train_mode(net)
                loss, logits = loss_fn(net, x, y)
                opt.zero_grad(set_to_none=True)
                if side_optimizer is not None:
                    side_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                opt.step()
                if side_optimizer is not None:
                    side_optimizer.step()
                sched.step()
                step += 1
                n = modelrun.batch_len(x)
                loss_sum += float(loss.detach()) * n
                seen += n
                if y is not None and isinstance(logits, torch.Tensor) and logits.ndim == 2:  # a classifier with labels
                    correct += float((logits.argmax(1) == y).sum())
                    counted += n
                bar.update(task, advance=1, loss=loss_sum / seen, acc=correct / max(counted, 1))
            record = {
                "epoch": epoch + 1,
                "steps": step,
                "loss": loss_sum / max(seen, 1),
                "train_acc": correct / counted if counted else None,
                "lr": opt.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - t0, 2),
            }
            _sync_buffers(model)
            if val_loader is not None:
                record["val_metric"] = metric(model, val_loader)
            history.append(record)
            if best is not None:
                best.offer(epoch + 1, record["val_metric"], model)
                stopped = best.exhausted and epoch + 1 < epochs
            if is_rank0():
                val = f", val {record['val_metric']:.4f}" if "val_metric" in record else ""
                acc = f", train acc {record['train_acc']:.4f}" if record["train_acc"] is not None else ""
                log(
                    f"[{label}] epoch {epoch + 1}/{epochs}: loss "
                    f"{record['loss']:.4f}{acc}{val} ({record['seconds']:.0f}s)"
                )
                if checkpoint is not None:
                    _save_checkpoint(checkpoint, model, opt, sched, epoch, history, config, total, best)
            if stopped:
                break
    kept = best.restore(model, history, stopped) if best is not None else None
    if kept is not None and is_rank0():
        log(f"[{label}] kept {kept['why']}")
    return history, start_epoch, kept


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or AdamW; no weight decay on norms and biases either way."""
    params_decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    params_other = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [
        {"params": params_decay, "weight_decay": config.weight_decay},
        {"params": params_other, "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    raise EdgepruneError(f"unknown optimizer {config.optimizer!r}; use sgd or adamw")


def _sync_buffers(model: nn.Module) -> None:
    """Under DDP every rank updates its own BatchNorm statistics from its own shard; rank 0's are
    given to all after each epoch, so evaluation and checkpoints agree across ranks."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _wrap(model: nn.Module) -> nn.Module:
    if dist.is_initialized() and dist.get_world_size() > 1:
        return nn.parallel.DistributedDataParallel(model)
    return model


def _schedule(opt: torch.optim.Optimizer, config: TrainConfig, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "onecycle":
        # pct_start * total == 1 (total == 4) gives torch's warm-up phase zero length: 0/0 in OneCycleLR
        pct_start = 0.25 if 0.25 * total != 1 else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=pct_start)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    raise EdgepruneError(f"unknown schedule {config.schedule!r}; use cosine or onecycle")


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    opt: Any,
    sched: Any,
    epoch: int,
    history: list,
    config: TrainConfig,
    total: int,
    best: _Best | None,
) -> None:
    with atomic.atomic_path(path) as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "history": history,
                "config": dataclasses.asdict(config),
                "total": total,
                "best": best.to_dict() if best is not None else None,
            },
            tmp,
        )


def _progress(label: str) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not is_rank0(),
        transient=True,
    )
