"""Recovery on CIFAR-10: edgeprune (L1 + fine-tune / distill / scratch) against torch-pruning's own
workflow, all at the same measured latency and with the same training budget.

The trained ResNet-20 (edgeprune/assets) is compressed to 50% of its measured latency on ORT CPU,
1 thread. Every row then gets the same number of epochs on the full training split and is scored on
the full 10,000-image test set. The torch-pruning row uses MetaPruner with magnitude importance and
a uniform ratio, found by bisection so that its measured latency ratio lands within 5% of
edgeprune's, then fine-tuned like the edgeprune fine-tune row.

    .venv/bin/python bench/cifar10_recovery.py --data PATH/cifar10.npz [--epochs 4]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import header, latency_ratio, trained  # noqa: E402
from edgeprune import atomic  # noqa: E402
from edgeprune.pipeline.compress import Settings, compress  # noqa: E402
from edgeprune.pipeline.counting import count  # noqa: E402
from edgeprune.pipeline.data import load_data  # noqa: E402
from edgeprune.pipeline.loading import from_module  # noqa: E402
from edgeprune.pipeline.measure import TargetMeasurer  # noqa: E402
from edgeprune.pipeline.recovery import TrainConfig, get_recovery, top1  # noqa: E402
from edgeprune.runtime_bench import get_runtime  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "cifar10_recovery.json"


def tp_uniform(base: torch.nn.Module, x: torch.Tensor, ratio: float) -> torch.nn.Module:
    """torch-pruning's documented workflow: MetaPruner, magnitude importance, one uniform ratio."""
    model = copy.deepcopy(base)
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio, ignored_layers=[model.fc]
    )
    pruner.step()
    return model.eval()


def match_latency(
    measurer: TargetMeasurer, base: torch.nn.Module, x: torch.Tensor, target: float, log: Callable[[str], None]
) -> tuple[float, torch.nn.Module, dict[str, Any], list[dict[str, Any]]]:
    """Bisect torch-pruning's ratio until its measured latency ratio is within 5% of `target`."""
    lo, hi, tries = 0.0, 0.95, []
    best = None
    for i in range(10):
        ratio = (lo + hi) / 2
        model = tp_uniform(base, x, ratio)
        lat = latency_ratio(measurer, base, model, f"tp_{i}")
        tries.append({"pruning_ratio": ratio, "latency_ratio": lat["ratio"]})
        log(f"  torch-pruning ratio {ratio:.3f} -> latency ratio {lat['ratio']:.3f} (target {target:.3f})")
        if best is None or abs(lat["ratio"] - target) < abs(best[2]["ratio"] - target):
            best = (ratio, model, lat)
        if abs(lat["ratio"] / target - 1.0) <= 0.05:
            break
        lo, hi = (ratio, hi) if lat["ratio"] > target else (lo, ratio)
    assert best is not None
    return best[0], best[1], best[2], tries


def recover(
    name: str, student: torch.nn.Module, teacher: torch.nn.Module, data: Any, epochs: int, log: Callable[[str], None]
) -> dict[str, Any]:
    recovery = get_recovery(name)
    config = TrainConfig(epochs=epochs, lr=recovery.default_lr)
    t0 = time.perf_counter()
    result = recovery.fit(student, teacher, data, config, top1, None, log)
    return {
        "recovery": name,
        "config": {"epochs": epochs, "lr": config.lr, "schedule": config.schedule},
        "history": result.history,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "top1": top1(student, data.val),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the full CIFAR-10 .npz (x_train, y_train, x_test, y_test)")
    p.add_argument("--epochs", type=int, default=4, help="recovery epochs for every row (default 4)")
    p.add_argument("--budget", default="50%")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    base = trained("resnet20")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    data = load_data(a.data, batch_size=128)
    result: dict[str, Any] = {
        **header("cifar10_recovery"),
        "budget": a.budget,
        "epochs": a.epochs,
        "protocol": {
            "runtime": "ort-cpu",
            "threads": 1,
            "graph_optimization": "ALL",
            "latency": "median, pruned vs baseline interleaved in one run",
            "accuracy": "top-1 on the full CIFAR-10 test set (10,000 images)",
            "training": "full 50,000-image training split, crop+flip, SGD nesterov, cosine",
        },
        "baseline": {"top1": top1(base, data.val), **vars(count(base, (x,)))},
        "rows": [],
    }
    log(f"baseline top-1 {result['baseline']['top1']:.4f}")
    work = Path(tempfile.mkdtemp(prefix="cifar10_recovery_"))
    t0 = time.perf_counter()
    res = compress(
        from_module(copy.deepcopy(base), x, arch="resnet20", num_classes=10),
        Settings(budget=a.budget),
        work / "run",
        log,
    )
    search_s = time.perf_counter() - t0
    pruned = res.model
    measurer = TargetMeasurer(get_runtime("ort-cpu", threads=1), (x,), work, repeats=400)
    ours = latency_ratio(measurer, base, pruned, "edgeprune")
    counts = count(pruned, (x,))
    log(
        f"edgeprune plan: latency ratio {ours['ratio']:.3f}, FLOPs ratio "
        f"{counts.flops / result['baseline']['flops']:.3f}"
    )
    for name in ("finetune", "distill", "scratch"):
        row = recover(name, copy.deepcopy(pruned), base, data, a.epochs, log)
        row.update(
            tool="edgeprune",
            method="l1",
            latency=ours,
            flops=counts.flops,
            params=counts.params,
            search_seconds=round(search_s, 1),
            candidates_measured=res.report["search"]["candidates_measured"],
        )
        result["rows"].append(row)
        log(f"edgeprune l1 + {name}: top-1 {row['top1']:.4f}")
        atomic.write_json(a.out, result)
    t0 = time.perf_counter()
    ratio, tp_model, tp_lat, tries = match_latency(measurer, base, x, ours["ratio"], log)
    tp_search_s = time.perf_counter() - t0
    tp_counts = count(tp_model, (x,))
    row = recover("finetune", tp_model, base, data, a.epochs, log)
    row.update(
        tool="torch-pruning",
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
    log(f"torch-pruning ratio {ratio:.3f} + finetune: top-1 {row['top1']:.4f}")
    atomic.write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
