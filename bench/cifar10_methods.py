"""Pruning methods on CIFAR-10 at one measured latency budget, with the same recovery for every row.

For each trained checkpoint in edgeprune/assets (ResNet-20 and, when trained, ResNet-56 / VGG-16):
budget 50% of the baseline latency on ORT CPU, 1 thread; rows = L1 (width only), Network Slimming,
ThiNet, LASSO (width only), L1 depth only, L1 width + depth. Every row is fine-tuned for the same
number of epochs on the full training split and scored on the full 10,000-image test set.

    .venv/bin/python bench/cifar10_methods.py --data PATH/cifar10.npz [--epochs 2] [--models resnet20]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import CIFAR10_PROTOCOL, carry_over, header, model_entry, run_row  # noqa: E402
from edgeprune import atomic  # noqa: E402
from edgeprune.pipeline.compress import Settings  # noqa: E402
from edgeprune.pipeline.data import load_data  # noqa: E402
from edgeprune.pipeline.loading import from_module  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "cifar10_methods.json"
ROWS = [  # (label, method, depth, method options)
    ("l1 width", "l1", "off", {}),
    ("slimming width", "slimming", "off", {"epochs": 1}),
    ("thinet width", "thinet", "off", {}),
    ("lasso width", "lasso", "off", {}),
    ("l1 depth only", "l1", "only", {}),
    ("l1 width+depth", "l1", "on", {}),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the full CIFAR-10 .npz")
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "vgg16"])
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs for every row (default 2)")
    p.add_argument("--budget", default="50%")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result: dict[str, Any] = {
        **header("cifar10_methods"),
        "budget": a.budget,
        "epochs": a.epochs,
        "protocol": CIFAR10_PROTOCOL | {"recovery": "finetune, same epochs every row"},
        "models": {},
        "skipped": {},
    }
    carry_over(a.out, result, a.models, ("budget", "epochs"))
    work = Path(tempfile.mkdtemp(prefix="cifar10_methods_"))
    data = load_data(a.data, batch_size=128)
    for arch in a.models:
        found = model_entry(arch, data, x, work, result, log)
        if found is None:
            continue
        base, measurer, entry = found
        for label, method, depth, options in ROWS:
            settings = Settings(
                precision="fp32",
                budget=a.budget,
                method=method,
                method_options=options,
                depth=depth,
                data=a.data,
                recover="finetune",
                epochs=a.epochs,
            )
            loaded = from_module(copy.deepcopy(base), x, arch=arch, num_classes=10)
            entry["rows"].append(
                run_row(f"{arch} {label}", loaded, settings, base, measurer, x, work, log) | {"label": label}
            )
            atomic.write_json(a.out, result)
    atomic.write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
