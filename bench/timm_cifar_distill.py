"""Label-free recovery of a timm classifier: distillation from the unpruned model on the training
images without their labels, against labelled fine-tuning and against torch-pruning + fine-tuning,
all at the same measured latency and the same training budget.

A timm ResNet-10-T trained on CIFAR-10 by `compress train --arch timm:resnet10t` (recipe in the
checkpoint's .json beside it; the checkpoint is committed in half precision) is compressed to 50 %
of its measured latency on ORT CPU, 1 thread, float32 (the comparison is about recovery). The pruned
model then gets, from the same weights and for the same epochs on the 50,000 training images:
labelled fine-tuning (cross-entropy), and label-free distillation (the images alone: edgeprune's
default recovery without labels). torch-pruning's row (MetaPruner, magnitude importance, one
uniform ratio bisected to within 5 % of edgeprune's measured latency ratio, as bench/cifar10_recovery.py
does) is fine-tuned with labels for the same epochs. Every row is scored by top-1 on the full
10,000-image test set, and by top-1 agreement with the unpruned model.

    .venv-zoo/bin/compress train --arch timm:resnet10t --data PATH/cifar10.npz --epochs 8 --lr 0.2 \\
        --out bench/checkpoints/timm_resnet10t_cifar10.pt        # the teacher (once)
    .venv-zoo/bin/python bench/timm_cifar_distill.py --data PATH/cifar10.npz [--epochs 2]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.cifar10_recovery import match_latency, recover  # noqa: E402
from bench.common import header, latency_ratio  # noqa: E402
from edgeprune import atomic  # noqa: E402
from edgeprune.pipeline.compress import Settings, compress  # noqa: E402
from edgeprune.pipeline.counting import count  # noqa: E402
from edgeprune.pipeline.data import load_data  # noqa: E402
from edgeprune.pipeline.loading import build_arch, from_module  # noqa: E402
from edgeprune.pipeline.measure import TargetMeasurer  # noqa: E402
from edgeprune.pipeline.recovery import TrainConfig, get_recovery, top1  # noqa: E402
from edgeprune.pipeline.recovery.evaluate import Fidelity  # noqa: E402
from edgeprune.runtime_bench import get_runtime  # noqa: E402

ARCH = "timm:resnet10t"
CHECKPOINT = REPO / "bench" / "checkpoints" / "timm_resnet10t_cifar10.pt"
DEFAULT_OUT = REPO / "bench" / "results" / "timm_cifar_distill.json"


def teacher(path: Path) -> torch.nn.Module:
    model = build_arch(ARCH, 10)
    model.load_state_dict({k: v.float() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()})
    return model.eval()


def unlabelled(npz: str, work: Path) -> str:
    """The same images without their labels: what a user holds at deployment."""
    z = np.load(npz, allow_pickle=False)
    path = work / "cifar10_images_only.npz"
    np.savez(path, x_train=z["x_train"], x_test=z["x_test"])
    return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the full CIFAR-10 .npz (x_train, y_train, x_test, y_test)")
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument("--epochs", type=int, default=2, help="recovery epochs for every row (default 2)")
    p.add_argument("--budget", default="50%")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "timm_cifar_distill",
        help="the compress run folder: a re-run resumes its search where it stopped",
    )
    a = p.parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    torch.set_num_threads(1)
    base = teacher(a.checkpoint)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    data = load_data(a.data, batch_size=128)
    images_only = load_data(unlabelled(a.data, work), batch_size=128)  # same images, same normalisation, no labels
    agreement = Fidelity(base, (x,))
    result: dict[str, Any] = {
        **header("timm_cifar_distill"),
        "arch": ARCH,
        "budget": a.budget,
        "epochs": a.epochs,
        "teacher": {
            "checkpoint": str(a.checkpoint.relative_to(REPO))
            if a.checkpoint.is_relative_to(REPO)
            else str(a.checkpoint),
            "recipe": str(a.checkpoint.with_suffix(".json").name),
            "top1": top1(base, data.val),
            **vars(count(base, (x,))),
        },
        "protocol": {
            "runtime": "ort-cpu",
            "threads": 1,
            "precision": "fp32",
            "latency": "median, pruned vs baseline interleaved in one run",
            "accuracy": "top-1 on the full CIFAR-10 test set (10,000 images); "
            "agreement: top-1 agreement with the teacher",
            "training": "the 50,000 training images, crop+flip, SGD nesterov, cosine; label-free: the same images "
            "without labels",
        },
        "rows": [],
    }
    log(f"teacher top-1 {result['teacher']['top1']:.4f}")
    t0 = time.perf_counter()
    res = compress(
        from_module(copy.deepcopy(base), x, arch=ARCH, num_classes=10),
        Settings(budget=a.budget, precision="fp32"),
        work / "run",
        log,
    )
    search_s = time.perf_counter() - t0
    pruned = res.model
    measurer = TargetMeasurer(get_runtime("ort-cpu", threads=1), (x,), work, repeats=400)
    ours = latency_ratio(measurer, base, pruned, "edgeprune")
    counts = count(pruned, (x,))
    common = {
        "latency": ours,
        "flops": counts.flops,
        "params": counts.params,
        "search_seconds": round(search_s, 1),
        "candidates_measured": res.report["search"]["candidates_measured"],
        "budget_met": res.met,
    }
    before = {"top1": top1(pruned, data.val), "agreement": agreement(pruned, data.val)}
    result["pruned_before_recovery"] = before
    log(f"edgeprune plan: latency ratio {ours['ratio']:.3f}, top-1 before recovery {before['top1']:.4f}")

    student = copy.deepcopy(pruned)
    row = recover("finetune", student, base, data, a.epochs, log)
    row.update(tool="edgeprune", labels=True, agreement=agreement(student, data.val), **common)
    result["rows"].append(row)
    atomic.write_json(a.out, result)

    student = copy.deepcopy(pruned)
    t0 = time.perf_counter()
    history = (
        get_recovery("distill")
        .fit(student, base, images_only, TrainConfig(epochs=a.epochs, lr=0.01), agreement, None, log)
        .history
    )
    result["rows"].append(
        {
            "tool": "edgeprune",
            "recovery": "distill (label-free)",
            "labels": False,
            "history": history,
            "train_seconds": round(time.perf_counter() - t0, 1),
            "top1": top1(student, data.val),
            "agreement": agreement(student, data.val),
            **common,
        }
    )
    atomic.write_json(a.out, result)

    t0 = time.perf_counter()
    ratio, tp_model, tp_lat, tries = match_latency(measurer, base, x, ours["ratio"], log)
    tp_search_s = time.perf_counter() - t0
    tp_counts = count(tp_model, (x,))
    row = recover("finetune", tp_model, base, data, a.epochs, log)
    row.update(
        tool="torch-pruning",
        labels=True,
        agreement=agreement(tp_model, data.val),
        method="MetaPruner + MagnitudeImportance(p=2), uniform",
        pruning_ratio=ratio,
        ratio_search=tries,
        latency=tp_lat,
        flops=tp_counts.flops,
        params=tp_counts.params,
        search_seconds=round(tp_search_s, 1),
        candidates_measured=len(tries),
    )
    result["rows"].append(row)
    for r in result["rows"]:
        log(f"{r['tool']} {r['recovery']}: top-1 {r['top1']:.4f}, latency ratio {r['latency']['ratio']:.3f}")
    labelled, label_free = result["rows"][0]["top1"], result["rows"][1]["top1"]
    result["target"] = {
        "label_free_within_1_point_of_labelled": label_free >= labelled - 0.01,
        "both_above_torch_pruning": min(labelled, label_free) > row["top1"],
    }
    atomic.write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
