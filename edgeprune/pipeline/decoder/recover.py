"""Recovering a cut decoder without labels, and the metric it is judged by.

Distillation: KL(teacher || student) of the next-token distributions at every position of the
unlabelled training sequences (temperature 1: the distribution generation samples from), AdamW
(weight decay 0.01) at 1e-4 by default with a linear warm-up and cosine decay, gradients clipped
at 1: what transformers are fine-tuned with (SGD diverges on them: docs/recovery.md).

Metric: perplexity on the held-out sequences (lower is better) and the next-token agreement with
the unpruned model (the share of positions whose most likely token is the same). The weights kept
are the best by held-out perplexity, the cut weights included (evaluated before the first step),
so a recovery that makes the model worse is never published.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edgeprune.pipeline.decoder.tokens import Tokens

LR = 1e-4
WEIGHT_DECAY = 0.01
#: held-out evaluations per epoch (the best is kept): a short recovery still gets several looks
EVALS_PER_EPOCH = 4
#: evaluations in a row worse than the start before the recovery stops
PATIENCE = 3


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits


@torch.no_grad()
def evaluate(model: nn.Module, teacher: nn.Module | None, val: torch.Tensor, batch: int = 4) -> dict[str, float]:
    """Held-out perplexity (next-token cross-entropy, exp) and, with a teacher, agreement with it."""
    model.eval()
    nll, agree, n = 0.0, 0, 0
    for start in range(0, len(val), batch):
        ids = val[start : start + batch]
        out = logits(model, ids)[:, :-1].float()
        nll += float(
            nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        )
        if teacher is not None:
            agree += int((out.argmax(-1) == logits(teacher, ids)[:, :-1].argmax(-1)).sum())
        n += ids[:, 1:].numel()
    result = {"perplexity": math.exp(min(nll / max(n, 1), 50.0))}
    return result | ({"agreement": agree / max(n, 1)} if teacher is not None else {})


def distill(
    student: nn.Module,
    teacher: nn.Module,
    tokens: Tokens,
    epochs: int,
    steps: int | None,
    lr: float | None,
    batch: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Train `student` in place to the teacher's distributions; it ends on the best weights seen."""
    torch.manual_seed(0)
    teacher.eval()
    train = tokens.train
    per_epoch = max(1, math.ceil(len(train) / batch))
    total = steps or per_epoch * epochs
    eval_every = max(1, min(per_epoch, total) // EVALS_PER_EPOCH)
    rate = lr or LR
    opt = torch.optim.AdamW(student.parameters(), lr=rate, weight_decay=WEIGHT_DECAY)
    warm = max(1, total // 20)

    def schedule(step: int) -> float:
        return (
            (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        )

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    start = evaluate(student, teacher, tokens.val)
    history = [{"step": 0, **start}]
    best: dict[str, float] = {"step": 0, **start}
    best_state = copy.deepcopy(student.state_dict())
    worse, t0, step = 0, time.perf_counter(), 0
    log(f"  before recovery: perplexity {start['perplexity']:.3f}, agreement {start['agreement']:.3f}")
    gen = torch.Generator().manual_seed(0)
    while step < total:
        order = torch.randperm(len(train), generator=gen)
        for first in range(0, len(train), batch):
            if step >= total:
                break
            ids = train[order[first : first + batch]]
            student.train()
            with torch.no_grad():
                target = torch.log_softmax(logits(teacher, ids).float(), -1)
            own = torch.log_softmax(logits(student, ids).float(), -1)
            loss = (target.exp() * (target - own)).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % eval_every and step != total:
                continue
            now = evaluate(student, teacher, tokens.val)
            history.append({"step": step, "loss": loss.item(), **now})
            log(f"  step {step}/{total}: KL {loss.item():.4f}, perplexity {now['perplexity']:.3f}")
            if now["perplexity"] < best["perplexity"]:
                best, best_state = {"step": step, **now}, copy.deepcopy(student.state_dict())
            worse = worse + 1 if now["perplexity"] > start["perplexity"] else 0
            if worse >= PATIENCE:
                log(f"  stopped: {PATIENCE} evaluations in a row worse than before recovery")
                step = total
                break
    student.load_state_dict(best_state)
    student.eval()
    kept = "the cut weights (no step improved the held-out perplexity)" if best["step"] == 0 else f"step {best['step']}"
    return {
        "method": "distill (KL on next-token distributions)",
        "optimizer": {"name": "AdamW", "lr": rate, "weight_decay": WEIGHT_DECAY, "schedule": "warm-up, cosine"},
        "steps": step,
        "batch_sequences": batch,
        "tokens": step * batch * int(train.shape[1]),
        "seconds": round(time.perf_counter() - t0, 2),
        "history": history,
        "kept": {"step": int(best["step"]), "why": f"best held-out perplexity: {kept}"},
        "final": {"perplexity": best["perplexity"], "agreement": best["agreement"]},
    }
