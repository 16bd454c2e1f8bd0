"""Knowledge distillation from the unpruned model, for any output structure, with or without labels.

With labels and class logits, as Hinton, Vinyals & Dean (2015) and the TAS paper (Dong & Yang
2019) recover searched networks:
    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y).
The T^2 factor keeps the soft-target gradients on the scale of the hard-label ones.

Without labels (the default recovery then: what users hold at deployment is unlabelled inputs) the
teacher is the only target, as in Minitron's logit + hidden-state distillation: every floating
output tensor of the teacher (tensors, nested tuples/lists/dicts, Hugging Face ModelOutputs,
ultralytics' (predictions, feature maps)) gets a term — T^2 KL over the last dimension where it is
class logits (evaluate.is_class_logits); otherwise binary cross-entropy on its probability channels
(a detector's class scores) and, on the rest, a squared error normalised by each channel's variance
(boxes in pixels and probabilities weigh alike), weighted by the teacher's confidence at each
position (`dense_output`) — averaged, plus the same squared error at up to `FEATURE_TAPS`
intermediate layers whose output the pruning left the same shape in both models (block outputs on
the kept residual width; a cut layer's narrower output cannot be compared), weighted by
`feature_weight`. Not for a detector (outputs that are not class logits): a whole feature map
imitated alike at every position is mostly background, as the detection-distillation work that
imitates only near objects observed (Wang et al. 2019, Yang et al. 2022's FGD); on
bench/yolo_distill.py's two plans, 30 epochs with AdamW, mAP50-95 (mean of the last five epochs)
0.277 -> 0.282 at 0.54 of the FLOPs and 0.275 -> 0.297 at 0.30 without the taps (teacher 0.307).

The student trains with only its batch-norm layers in training mode (the rest, dropout included, in
eval mode, as the teacher): a layer that returns something else while training (a YOLO head
returns raw maps instead of (decoded boxes, maps)) then returns what the teacher returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune import modelrun
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.data import DataBundle
from edgeprune.pipeline.recovery.base import Recovery, register
from edgeprune.pipeline.recovery.evaluate import Metric, is_class_logits, top1
from edgeprune.pipeline.recovery.trainer import TrainConfig, TrainResult, train

#: the most intermediate layers whose outputs the student imitates (evenly spaced in forward order)
FEATURE_TAPS = 8
#: the gradient norm label-free distillation clips to (TrainConfig.grad_clip)
GRAD_CLIP = 5.0
#: the layers the student trains in training mode. Not dropout: the teacher has none at inference, so
#: the student would learn to undo noise the teacher never sees (a pruned 2-layer BERT distilled on 576
#: sequences fell from agreement 0.98 to 0.86 with its dropout on, and reached 1.00 with it off)
_NORMS = (nn.modules.batchnorm._BatchNorm,)


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    return alpha * soft_kl(student_logits, teacher_logits, temperature) + (1.0 - alpha) * F.cross_entropy(
        student_logits, labels
    )


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)) over the last dimension, averaged over the rest."""
    t = temperature
    s2, t2 = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
    return t * t * F.kl_div(F.log_softmax(s2 / t, dim=1), F.softmax(t2 / t, dim=1), reduction="batchmean")


def regression(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error over the teacher's variance, per channel (dim 1) and averaged: scale-free, so a
    detector's box coordinates in pixels and its class scores in [0, 1] weigh alike (over the whole
    tensor the boxes drowned the scores: a YOLOv8n distilled that way kept mAP50-95 at 0.001);
    1.0 for a student that outputs each channel's mean. One value per channel: over the whole tensor.
    `weight` (broadcast over the channels) weighs each position's error: `dense_output`'s confidence."""
    s = student.reshape(teacher.shape)
    dims = [d for d in range(teacher.ndim) if d != 1]
    if teacher.ndim < 2 or teacher.numel() // teacher.shape[1] < 2:
        return F.mse_loss(s, teacher) / (teacher.var() + 1e-6)
    sq = (s - teacher) ** 2
    err = (sq if weight is None else sq * weight).mean(dim=dims)
    var = teacher.var(dim=dims, unbiased=False)
    # a channel (nearly) constant in the teacher (a dead ReLU channel, a class never seen) is held to
    # the channels' mean scale, not to its own ~0
    floor = 0.01 * var.mean() + 1e-12
    return (err / (var + floor)).mean()


def dense_output(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The term for an output that is not class logits. Where some of its channels (dim 1) hold
    probabilities in the teacher (every value in [0, 1]: a detector's class scores, a mask) they get
    binary cross-entropy against the teacher's, less the teacher's own entropy (0 at a match), summed
    over those channels: squared error on probabilities has no gradient left at the near-0 scores of
    most positions, where a detector's ranking is decided. The other channels (boxes) get `regression`,
    each position weighted by the teacher's highest probability there, relative to the mean: a box the
    teacher gives no class is background, and matching it spends the capacity the kept boxes need.
    Without probability channels this is `regression`. On the YOLOv8n of bench/yolo_distill.py, 10
    epochs label-free: mAP50-95 0.0384 with `regression` alone, 0.0896 with the cross-entropy, 0.1101
    with the weighting too (teacher 0.2026)."""
    if teacher.ndim < 3:
        return regression(student, teacher)
    s = student.reshape(teacher.shape)
    dims = [d for d in range(teacher.ndim) if d != 1]
    prob = (teacher.amin(dim=dims) >= 0) & (teacher.amax(dim=dims) <= 1)
    if not bool(prob.any()):
        return regression(s, teacher)
    p_idx, v_idx = prob.nonzero().flatten(), (~prob).nonzero().flatten()
    sp = s.index_select(1, p_idx).clamp(1e-6, 1 - 1e-6)
    tp = teacher.index_select(1, p_idx).clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy(sp, tp, reduction="none") - F.binary_cross_entropy(tp, tp, reduction="none")
    loss = bce.sum(1).mean()
    if v_idx.numel():
        weight = tp.amax(dim=1, keepdim=True)
        loss = loss + regression(
            s.index_select(1, v_idx), teacher.index_select(1, v_idx), weight / (weight.mean() + 1e-12)
        )
    return loss


def output_loss(student_out: Any, teacher_out: Any, temperature: float) -> torch.Tensor:
    """The mean over the teacher's floating outputs of a term suited to each (module docstring)."""
    want, got = modelrun.named_outputs(teacher_out), modelrun.named_outputs(student_out)
    if len(want) != len(got):
        raise EdgepruneError(
            f"the pruned model returns {len(got)} tensors and the unpruned one {len(want)}; "
            "distillation pairs them by position"
        )
    terms = [
        soft_kl(s, t, temperature) if is_class_logits(name, t) else dense_output(s, t)
        for (name, t), (_, s) in zip(want, got)
        if t.is_floating_point()
    ]
    if not terms:
        raise EdgepruneError(
            "the model's outputs are all integers (indices, not scores), which cannot be distilled; "
            "give labelled data and --recover finetune, or a model that returns scores"
        )
    return torch.stack(terms).mean()


def train_norms_only(model: nn.Module) -> None:
    """Eval mode but for batch-norm layers (the student's mode while distilling)."""
    model.eval()
    for m in model.modules():
        if isinstance(m, _NORMS):
            m.train()


class FeatureTaps:
    """Forward hooks on the layers (of the same name in both models) whose outputs have the same
    shape in the student as in the teacher, at most `FEATURE_TAPS`, evenly spaced in forward order."""

    def __init__(self, student: nn.Module, teacher: nn.Module, x: Any) -> None:
        t_shapes, order = _output_shapes(teacher, x)
        s_shapes, _ = _output_shapes(student, x)
        same = [n for n in order if s_shapes.get(n) == t_shapes[n]]
        k = min(FEATURE_TAPS, len(same))
        self.names = [same[round(i * (len(same) - 1) / max(k - 1, 1))] for i in range(k)] if k else []
        self.student, self.teacher = dict(student.named_modules()), dict(teacher.named_modules())
        self.got: dict[str, torch.Tensor] = {}
        self.want: dict[str, torch.Tensor] = {}

    def loss(self) -> torch.Tensor | None:
        terms = [regression(self.got[n], self.want[n].detach()) for n in self.names if n in self.got and n in self.want]
        # emptied in place: the hooks hold these two dicts (rebinding them silently ended feature matching after step 1)
        self.got.clear()
        self.want.clear()
        return torch.stack(terms).mean() if terms else None

    def __enter__(self) -> FeatureTaps:
        self.handles = [
            m[n].register_forward_hook(_keeper(store, n))
            for n in self.names
            for m, store in ((self.student, self.got), (self.teacher, self.want))
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def _first(data: DataBundle) -> Any:
    """Two inputs of the first training batch (one tensor, or a tuple of a model's inputs)."""
    batch = next(iter(data.train))[0]
    return tuple(t[:2] for t in batch) if isinstance(batch, (tuple, list)) else batch[:2]


def _keeper(store: dict[str, torch.Tensor], name: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            store[name] = out

    return hook


@torch.no_grad()
def _output_shapes(model: nn.Module, x: Any) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Each parameterised layer's output shape on `x` (tensor outputs only), and their forward order."""
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.is_floating_point() and name not in shapes:
                shapes[name] = tuple(out.shape)
                order.append(name)

        return record

    handles = [
        m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n and any(True for _ in m.parameters())
    ]
    try:
        with modelrun.eval_mode(model):
            modelrun.call(model, x)
    finally:
        for h in handles:
            h.remove()
    return shapes, order


@register
class Distill(Recovery):
    name = "distill"
    default_lr = 0.01

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, feature_weight: float = 1.0) -> None:
        self.temperature = temperature
        self.alpha = alpha
        self.feature_weight = feature_weight

    def scale_free_loss(self, teacher: nn.Module, data: DataBundle) -> bool:
        """Without labels, any floating output that is not class logits gets `dense_output`, whose
        terms are normalised by the teacher's spread."""
        if data.labelled:
            return False
        with torch.no_grad(), modelrun.eval_mode(teacher):
            out = modelrun.call(teacher, _first(data))
        return any(t.is_floating_point() and not is_class_logits(n, t) for n, t in modelrun.named_outputs(out))

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
        teacher.eval()
        dense = self.scale_free_loss(teacher, data)
        imitate = not data.labelled and self.feature_weight > 0 and not dense
        taps = FeatureTaps(student, teacher, _first(data)) if imitate else None
        if taps is not None:
            log(f"  distilling the outputs and {len(taps.names)} intermediate layers kept at full width")
        elif dense:
            log("  distilling the outputs alone: feature maps are mostly background in a detector")

        def loss_fn(model: nn.Module, x: Any, y: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
            with torch.no_grad():
                t_out = modelrun.call(teacher, x)
            out = modelrun.call(model, x)
            if y is not None:  # labels: the task loss joins the logit distillation, as before
                logits = modelrun.first_output(out)
                return kd_loss(logits, modelrun.first_output(t_out), y, self.temperature, self.alpha), logits
            loss = output_loss(out, t_out, self.temperature)
            feat = taps.loss() if taps is not None else None
            return (loss if feat is None else loss + self.feature_weight * feat), out

        if not data.labelled and config.grad_clip is None:
            config = dataclasses.replace(config, grad_clip=GRAD_CLIP)
        if taps is None:
            return train(
                student,
                data.train,
                config,
                loss_fn,
                data.val,
                metric,
                checkpoint,
                log,
                label=self.name,
                train_mode=train_norms_only,
            )
        with taps:
            return train(
                student,
                data.train,
                config,
                loss_fn,
                data.val,
                metric,
                checkpoint,
                log,
                label=self.name,
                train_mode=train_norms_only,
            )
