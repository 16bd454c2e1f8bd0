"""Learned pruning (Pruning from Scratch, TAS) on CIFAR-10 at the criteria benchmarks' latency budget.

Same protocol as bench/cifar10_recovery.py: budget 50% of the baseline's measured latency (ORT CPU,
1 thread), the same recovery budget (--epochs, default 4, of the full training split) for every
row, top-1 on the full 10,000-image test set. Rows:
- pfs: gates learned on a *randomly initialized* network (--search-epochs), a global gate
  threshold searched against the measured latency, the pruned shape trained from scratch.
- tas (width+depth): width and depth distributions searched on the trained network
  (--search-epochs), the searched shape distilled from the unpruned network.
- tas (width only), the same without depth.
Each row records total compute time (method search + budget search + recovery). The L1 and
torch-pruning rows at the same budget and epochs are in cifar10_recovery.json and quoted next to
these in bench/README.md, not re-run.

    .venv/bin/python bench/cifar10_learned.py --data PATH/cifar10.npz [--models resnet20] [--epochs 4]
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
from edgeprune.pipeline.loading import from_module, untrained  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "cifar10_learned.json"
ROWS = [  # (label, method, depth, starts from random weights)
    ("pfs + scratch", "pfs", "off", True),
    ("tas width+depth + distill", "tas", "on", False),
    ("tas width + distill", "tas", "off", False),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the full CIFAR-10 .npz")
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument(
        "--epochs", type=int, default=4, help="recovery epochs for every row (default 4, as cifar10_recovery)"
    )
    p.add_argument(
        "--search-epochs", type=int, default=1, help="gate learning / architecture search epochs (default 1)"
    )
    p.add_argument(
        "--search-steps",
        type=int,
        help="gate learning / architecture search steps instead of epochs (ResNet-56's TAS epoch is ~50 min here)",
    )
    p.add_argument(
        "--rows",
        nargs="+",
        choices=[r[0] for r in ROWS],
        default=[r[0] for r in ROWS],
        help="which rows to run (default all)",
    )
    p.add_argument("--budget", default="50%")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result: dict[str, Any] = {
        **header("cifar10_learned"),
        "budget": a.budget,
        "protocol": CIFAR10_PROTOCOL | {"training": "the same recovery epochs for every row of a model; search on top"},
        "models": {},
        "skipped": {},
    }
    carry_over(a.out, result, a.models, ("budget",))
    search = {"steps": a.search_steps} if a.search_steps else {"epochs": a.search_epochs}
    work = Path(tempfile.mkdtemp(prefix="cifar10_learned_"))
    data = load_data(a.data, batch_size=128)
    for arch in a.models:
        found = model_entry(arch, data, x, work, result, log)
        if found is None:
            continue
        base, measurer, entry = found
        entry |= {"epochs": a.epochs, "search": search}
        for label, method, depth, from_scratch in (r for r in ROWS if r[0] in a.rows):
            settings = Settings(
                precision="fp32",
                budget=a.budget,
                method=method,
                depth=depth,
                data=a.data,
                epochs=a.epochs,
                method_options=search,
            )
            loaded = (
                untrained(arch, 10, (1, 3, 32, 32))
                if from_scratch
                else from_module(copy.deepcopy(base), x, arch=arch, num_classes=10)
            )
            entry["rows"].append(
                run_row(f"{arch} {label}", loaded, settings, base, measurer, x, work, log) | {"label": label}
            )
            atomic.write_json(a.out, result)
    atomic.write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
