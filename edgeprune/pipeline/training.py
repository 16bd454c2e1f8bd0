"""`compress train`: train a baseline with the same loop recovery uses, and record its recipe.

The state dict goes to OUT and a recipe (architecture, data, schedule, epochs, accuracy on the
full validation split, time, machine) to OUT with a .json suffix, so a committed checkpoint says
exactly how it was obtained. Resumes from OUT.ckpt after an interruption.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edgeprune import atomic, environment, modelrun
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline import distributed
from edgeprune.pipeline.data import check_fits, load_data
from edgeprune.pipeline.loading import build_arch
from edgeprune.pipeline.recovery import TrainConfig, top1, train


def train_baseline(
    arch: str,
    data_spec: str,
    out: Path,
    epochs: int | None,
    steps: int | None,
    lr: float,
    schedule: str,
    batch_size: int,
    num_classes: int | None,
    seed: int,
    log: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Train and save; returns the recipe on rank 0 (None on the other ranks under torchrun)."""
    ctx = distributed.init_from_env()
    check_out(out)  # before any training: the first checkpoint is written after an epoch
    data = load_data(data_spec, batch_size, seed=seed, num_replicas=ctx.world_size, rank=ctx.rank)
    torch.manual_seed(seed)
    model = build_arch(arch, num_classes or data.num_classes)
    shape = (1, *data.input_shape) if data.input_shape else None
    if shape is not None:
        # graph.run: eval mode and no_grad, so the probe neither moves BN statistics nor fails on
        # batch-1 BN at 1x1 (resnet18 on 32x32 images)
        check_fits(data, int(modelrun.run(model, (torch.zeros(shape),))[0].shape[-1]), shape)
    config = TrainConfig(epochs=epochs, steps=steps, lr=lr, schedule=schedule, seed=seed)
    t0 = time.perf_counter()
    result = train(
        model,
        data.train,
        config,
        val_loader=data.val,
        checkpoint=out.with_suffix(".ckpt"),
        log=log if ctx.is_rank0 else (lambda line: None),
        label=f"train {arch}",
    )
    if not ctx.is_rank0:
        return None
    with atomic.atomic_path(out) as tmp:
        torch.save(model.state_dict(), tmp)
    recipe = {
        "arch": arch,
        "num_classes": num_classes or data.num_classes,
        "data": data.describe(),
        "input_shape": list(shape) if shape else None,
        "config": {
            "epochs": epochs,
            "steps": steps,
            "lr": lr,
            "schedule": schedule,
            "batch_size": batch_size,
            "optimizer": "SGD momentum 0.9 nesterov, weight decay 5e-4 (not on BN/bias)",
            "augmentation": "random crop (pad 4) + horizontal flip"
            if getattr(data.train, "augment", False)
            else "none",
            "seed": seed,
            "processes": ctx.world_size,
        },
        "metric": "top1",
        "test_metric": top1(model, data.val),
        "epochs_run": len(result.history),
        "history": result.history,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "environment": environment.describe(),
        "recipe_path": str(out.with_suffix(".json")),
    }
    atomic.write_json(out.with_suffix(".json"), recipe)
    return recipe


def check_out(out: Path) -> None:
    """Refuse a state dict path whose folder cannot be made or written, by creating (and removing)
    a file in its nearest existing folder: what really fails there, for root too (chmod does not
    stop root, a read-only mount or /proc does)."""
    folder = Path(out).absolute().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise EdgepruneError(
            f"--out {out}: {existing} is a file, so the folder for the state dict cannot be made; pick another --out"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgeprune-write-check.", dir=existing)
    except OSError as err:
        raise EdgepruneError(
            f"--out {out}: cannot create a file in {existing} ({err.strerror}); pick a folder you can write to"
        ) from None
    os.close(fd)
    os.unlink(probe)
