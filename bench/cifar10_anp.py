"""Robust pruning on CIFAR-10: clean and PGD top-1 of the base, adversarially trained and ANP models
(the ANP paper's comparison), at the other CIFAR-10 benchmarks' latency budget; SANP beside them.

From the trained ResNet-20 (edgeprune/assets), budget 50% of its measured latency on ORT CPU, 1 thread:
- base: the trained checkpoint as it is;
- base + AT: Madry et al.'s adversarial training of the unpruned model (PGD --train-pgd-steps,
  eps 8/255, step 2/255);
- l1 + AT: L1 channel pruning to the budget, then adversarial fine-tuning (pruning that ignores
  robustness, recovered for it);
- anp + AT: ANP (masks + weights trained adversarially with vulnerability suppression for --epochs),
  pruned to the budget, then --recovery-epochs of adversarial fine-tuning;
  the three robust rows get the same adversarial training in total, --epochs + --recovery-epochs;
- sanp (static) + fine-tune: SANP's SPMs and weights trained for --epochs (clean loss, the paper's),
  the static export pruned to the budget, fine-tuned clean; its dynamic model's measured saving is
  in the row (`dynamic`).
Columns: clean top-1 on the full test set, PGD top-1 (--eval-pgd-steps, eps 8/255, step 2/255,
random start) on the first --robust-images test images, latency ratio (interleaved), MFLOPs.

    .venv/bin/python bench/cifar10_anp.py --data PATH/cifar10.npz [--epochs 1] [--recovery-epochs 1]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import CIFAR10_PROTOCOL, earlier_result, header, model_entry, run_row  # noqa: E402
from edgeprune import atomic  # noqa: E402
from edgeprune.pipeline.compress import Settings  # noqa: E402
from edgeprune.pipeline.data import load_data  # noqa: E402
from edgeprune.pipeline.loading import from_module  # noqa: E402
from edgeprune.pipeline.recovery import TrainConfig, top1, train  # noqa: E402
from edgeprune.pipeline.recovery.pgd import PGD, adversarial_loss, robust_top1  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "cifar10_anp.json"
ROWS = [  # (label, method, whether it trains for --epochs itself (else recovery takes them too), recovery)
    ("l1 + AT", "l1", False, "adversarial"),
    ("anp + AT", "anp", True, "adversarial"),
    ("sanp static + fine-tune", "sanp", True, "finetune"),
]
LABELS = ["base", "base + AT", *(r[0] for r in ROWS)]
#: what an earlier result file must share for its rows to be kept beside this run's
SAME = (
    "smoke",
    "budget",
    "arch",
    "method_training",
    "recovery",
    "adversarial_training_total",
    "train_attack",
    "eval_attack",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the full CIFAR-10 .npz")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--epochs", type=int, default=1, help="ANP's and SANP's own training (default 1)")
    p.add_argument(
        "--recovery-epochs",
        type=int,
        default=1,
        help="recovery after ANP and SANP (default 1); base + AT and l1 + AT train for --epochs + --recovery-epochs",
    )
    p.add_argument(
        "--steps",
        type=int,
        help="optimizer steps instead of epochs (each flag's epochs become this many steps: smoke runs)",
    )
    p.add_argument(
        "--train-pgd-steps", type=int, default=7, help="PGD steps of adversarial training (default 7, Madry et al.)"
    )
    p.add_argument("--eval-pgd-steps", type=int, default=10, help="PGD steps of the robust evaluation (default 10)")
    p.add_argument("--robust-images", type=int, default=10000, help="test images attacked (default: all 10,000)")
    p.add_argument("--budget", default="50%")
    p.add_argument("--smoke", action="store_true", help="label the result file a smoke run (not a result)")
    p.add_argument(
        "--rows",
        nargs="+",
        choices=LABELS,
        default=LABELS,
        help="rows to run (default all; 'base' is the checkpoint's PGD evaluation); the others are kept from an "
        "earlier --out with the same settings, so two processes can split the rows, one core each",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def budget(epochs: int) -> dict[str, int | None]:
        return {"epochs": None, "steps": a.steps * epochs} if a.steps else {"epochs": epochs, "steps": None}

    method_training, recovery, total = budget(a.epochs), budget(a.recovery_epochs), budget(a.epochs + a.recovery_epochs)
    result: dict[str, Any] = {
        **header("cifar10_anp"),
        "smoke": a.smoke,
        "budget": a.budget,
        "arch": a.arch,
        "method_training": method_training,
        "recovery": recovery,
        "adversarial_training_total": total,
        "train_attack": {"eps": 8 / 255, "step": 2 / 255, "steps": a.train_pgd_steps},
        "eval_attack": {
            "eps": 8 / 255,
            "step": 2 / 255,
            "steps": a.eval_pgd_steps,
            "random_start": True,
            "images": a.robust_images,
        },
        "protocol": CIFAR10_PROTOCOL
        | {
            "robust accuracy": f"PGD top-1 on the first {a.robust_images} test images",
            "training": "base + AT and l1 + AT: adversarial_training_total; anp and sanp: "
            "method_training, then recovery",
        },
        "models": {},
        "skipped": {},
    }
    work = Path(tempfile.mkdtemp(prefix="cifar10_anp_"))
    data = load_data(a.data, batch_size=128)
    attack = PGD.for_data(data, steps=a.eval_pgd_steps)

    def robust(model: torch.nn.Module) -> dict[str, Any]:
        t0 = time.perf_counter()
        return {
            "robust_top1": robust_top1(model, data.val, attack, a.robust_images),
            "robust_seconds": round(time.perf_counter() - t0, 1),
        }

    def save() -> None:
        atomic.write_json(a.out, _merged(a.out, result, a.arch, a.rows))

    found = model_entry(a.arch, data, x, work, result, log)
    if found is None:
        save()
        return 1
    base, measurer, entry = found
    if "base" in a.rows:
        entry["baseline"].update(robust(base))
        log(f"base: top-1 {entry['baseline']['top1']:.4f}, robust {entry['baseline']['robust_top1']:.4f}")
    if "base + AT" in a.rows:
        entry["rows"].append(
            _adversarially_trained(base, data, a, total, robust, log) | {"flops": entry["baseline"]["flops"]}
        )
        save()
    for label, method, learns, recover in (r for r in ROWS if r[0] in a.rows):
        options = (method_training | ({"pgd_steps": a.train_pgd_steps} if method == "anp" else {})) if learns else {}
        settings = Settings(
            precision="fp32",
            budget=a.budget,
            method=method,
            method_options=options,
            data=a.data,
            recover=recover,
            pgd_steps=a.train_pgd_steps,
            **(recovery if learns else total),
        )
        loaded = from_module(copy.deepcopy(base), x, arch=a.arch, num_classes=10)
        extras = lambda res: robust(res.model) | {"method_state": _summary(res.report["method"]["learned"])}  # noqa: E731
        entry["rows"].append(
            run_row(f"{a.arch} {label}", loaded, settings, base, measurer, x, work, log, evaluate=extras)
            | {"label": label}
        )
        save()
    save()
    return 0


def _adversarially_trained(
    base: torch.nn.Module, data: Any, a: argparse.Namespace, budget: dict[str, Any], robust: Any, log: Any
) -> dict[str, Any]:
    """The unpruned model after Madry et al.'s adversarial training (same architecture: latency ratio 1
    by construction, not timed)."""
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    train(
        model,
        data.train,
        TrainConfig(lr=0.01, **budget),
        adversarial_loss(PGD.for_data(data, steps=a.train_pgd_steps)),
        log=log,
        label="base + AT",
    )
    seconds = round(time.perf_counter() - t0, 1)
    model.eval()
    row = {
        "label": "base + AT",
        "method": None,
        "recovery": "adversarial",
        "top1": top1(model, data.val),
        **robust(model),
        "latency_ratio": 1.0,
        "latency_note": "the unpruned architecture: not re-timed",
        "training_seconds": seconds,
    }
    log(f"base + AT: top-1 {row['top1']:.4f}, robust {row['robust_top1']:.4f}, {seconds:.0f}s")
    return row


def _merged(out: Path, result: dict[str, Any], arch: str, running: list[str]) -> dict[str, Any]:
    """This run's result plus the rows it did not run from the file already at `out` (when that
    was measured with the same settings: `SAME`), in the table's order; each kept row records the
    commit it was measured at. The file is re-read on every save, so a second process's rows,
    saved meanwhile, are kept too."""
    found = earlier_result(out, result, SAME)
    before = found[0].get("models", {}).get(arch) if found else None
    mine = result["models"].get(arch)
    if found is None or before is None or mine is None:
        return result
    commit = found[1]
    baseline = (
        mine["baseline"]
        if "base" in running
        else {**mine["baseline"], **{k: v for k, v in before["baseline"].items() if k.startswith("robust")}}
    )
    kept = [{"measured_at_commit": commit, **r} for r in before["rows"] if r["label"] not in running]
    rows = sorted(kept + mine["rows"], key=lambda r: LABELS.index(r["label"]))
    return {**result, "models": {**result["models"], arch: {**mine, "baseline": baseline, "rows": rows}}}


def _summary(learned: dict[str, Any]) -> dict[str, Any]:
    """What a method learned, without its per-channel lists (those are in each run's report)."""
    return {k: v for k, v in learned.items() if k not in ("keep", "keep_frequency", "scores")}


if __name__ == "__main__":
    sys.exit(main())
