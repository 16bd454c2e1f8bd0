"""The sensitivity map's cost, and what measuring fewer widths per group costs in accuracy (issue 38).

**Cost.** For each model of a ladder, the sensitivity map (search/sensitivity.py) as the pipeline
computes it (its calibration image count for the input size, L1 scores, --round-to 16), in one
process: `before`, as the code before this change did (every candidate width, each trial pruned by
`apply`: a deep copy, its own trace, two shape checks; reproduced here as `before_change`);
`every`, every width with the one trace the map now makes; `after`, the map now (`MEASURED` widths
per group measured, the others interpolated): trials, seconds, seconds per trial, whether `every`
equals `before` (the trace is an implementation detail), and how closely `after` agrees with the
every-width map (Spearman correlation of all the drops).
Models: the trained CIFAR-10 ResNet-20 and ResNet-56 (32 px) and, random-weight (the cost does not
depend on the weights), MobileNetV2 (32 px) and ResNet-18 at 224 px. Calibration images are the
CIFAR-10 test split for the trained models and Gaussian noise for the others. `--zoo` (in the zoo
environment) adds ultralytics' YOLOv8n at 320 and 640 px and timm's resnet50 at 224 px, random
weights; `--every-limit` skips the `every` and `before` maps where they would take longer than that
(seconds, at least the `after` map's seconds per trial times their trials), and the row says so.

**Accuracy A/B.** The trained ResNet-20 and ResNet-56 at a 50 % FLOPs budget (counted, so both maps
search under the same budget exactly and no timing noise enters), the default guided search with
each map, the plan fine-tuned for `--steps` (same seed) on CIFAR-10's training split, top-1 on its
test split.

    .venv/bin/python bench/sensitivity_cost.py --data ../shared/data/cifar10/cifar10.npz
    .venv-zoo/bin/python bench/sensitivity_cost.py --data ../shared/data/cifar10/cifar10.npz --zoo --skip-ab
"""

from __future__ import annotations

import argparse
import copy
import json
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

from bench.common import header, trained  # noqa: E402
from edgeprune import atomic, models  # noqa: E402
from edgeprune.pipeline.compress import Settings, compress  # noqa: E402
from edgeprune.pipeline.counting import count  # noqa: E402
from edgeprune.pipeline.loading import from_module, load_model  # noqa: E402
from edgeprune.pipeline.methods import get_method  # noqa: E402
from edgeprune.pipeline.prune.apply import apply  # noqa: E402
from edgeprune.pipeline.prune.plan import Plan  # noqa: E402
from edgeprune.pipeline.prune.space import discover  # noqa: E402
from edgeprune.pipeline.search import sensitivity  # noqa: E402

OUT = REPO / "bench" / "results" / "sensitivity_cost.json"
ROUND_TO = 16


def cifar_test(path: str, n: int) -> torch.Tensor:
    """The first `n` CIFAR-10 test images, normalised as the data loader does (per-channel)."""
    z = np.load(path)
    x = torch.from_numpy(z["x_test"][:n]).permute(0, 3, 1, 2).float() / 255.0
    return (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)


def ladder(data: str, zoo: bool, yolo_sizes: list[int]) -> list[tuple[str, torch.nn.Module, tuple[int, ...], str]]:
    """(name, model, input shape, where the calibration images come from)."""
    rows: list[tuple[str, torch.nn.Module, tuple[int, ...], str]] = [
        ("resnet20 (trained, 32 px)", trained("resnet20"), (1, 3, 32, 32), "cifar"),
        ("resnet56 (trained, 32 px)", trained("resnet56"), (1, 3, 32, 32), "cifar"),
        ("mobilenetv2 (32 px)", models.create("mobilenetv2", num_classes=10).eval(), (1, 3, 32, 32), "noise"),
        ("resnet18 (224 px)", models.create("resnet18", num_classes=1000).eval(), (1, 3, 224, 224), "noise"),
    ]
    if zoo:
        import timm

        rows.append(("timm resnet50 (224 px)", timm.create_model("resnet50").eval(), (1, 3, 224, 224), "noise"))
        for size in yolo_sizes:
            rows.append((f"yolov8n ({size} px)", torch.nn.Identity(), (1, 3, size, size), "noise"))
    return rows


def cost_row(
    name: str, model: torch.nn.Module, shape: tuple[int, ...], source: str, data: str, every_limit: float
) -> dict[str, Any]:
    # ultralytics through its door (random weights by name), as `compress --arch ultralytics:yolov8n` loads it
    yolo = "yolo" in name
    loaded = (
        load_model(None, "ultralytics:yolov8n", input_shape=shape) if yolo else from_module(model, input_shape=shape)
    )
    x = loaded.example_inputs
    space = discover(loaded.model, x)
    scores = get_method("l1").scores(loaded.model, space, x)
    n = sensitivity.calibration_images(x[0])
    calib = (
        cifar_test(data, n)
        if source == "cifar"
        else torch.randn(n, *shape[1:], generator=torch.Generator().manual_seed(0))
    )
    row: dict[str, Any] = {
        "model": name,
        "input": list(shape),
        "mflops": round(count(loaded.model, x).flops / 1e6, 1),
        "groups": len(space.groups),
        "calibration_images": n,
    }
    maps: dict[str, Any] = {}
    variants = (  # the cheapest first: its time per trial estimates the others'
        (
            "after",
            (sensitivity.MEASURED, sensitivity.ESTIMATE_ABOVE),
            lambda: sensitivity.sensitivity(loaded.model, space, scores, x, calib, ROUND_TO),
        ),
        (
            "measured",
            (sensitivity.MEASURED, None),
            lambda: sensitivity.sensitivity(loaded.model, space, scores, x, calib, ROUND_TO, estimate_above=None),
        ),
        (
            "every",
            (None, None),
            lambda: sensitivity.sensitivity(loaded.model, space, scores, x, calib, ROUND_TO, None, None),
        ),
        ("before", (None, None), lambda: before_change(loaded.model, space, scores, x, calib)),
    )
    for label, (measured, estimate_above), compute in variants:
        trials = sensitivity.trials(space, ROUND_TO, measured, estimate_above)
        if label == "measured" and not sensitivity.estimated(space, sensitivity.ESTIMATE_ABOVE):
            continue  # the same map as `after`: a model of few groups is measured group by group
        if "after" in row and row["after"]["seconds_per_trial"] * trials > every_limit:
            row[label] = {"trials": trials, "skipped": f"at least {row['after']['seconds_per_trial'] * trials:.0f} s"}
            continue
        t0 = time.perf_counter()
        maps[label] = compute()
        seconds = time.perf_counter() - t0
        row[label] = {"trials": trials, "seconds": round(seconds, 1), "seconds_per_trial": round(seconds / trials, 3)}
        print(f"{name}: {label}: {trials} trials, {seconds:.1f} s", flush=True)
    reference = maps.get("before", maps.get("every"))
    for label in ("after", "measured"):
        if reference is not None and label in maps:
            a = [reference[g][w] for g in reference for w in reference[g]]
            b = [maps[label][g][w] for g in reference for w in reference[g]]
            ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
            row[f"spearman_{label}_vs_every_width"] = round(float(np.corrcoef(ra, rb)[0, 1]), 4)
    if "before" in maps and "every" in maps:  # the one trace changes the cost, not the figures
        row["every_equals_before"] = max(
            abs(maps["before"][g][w] - maps["every"][g][w]) for g in maps["before"] for w in maps["before"][g]
        ) <= 1e-6 * max(1.0, max(abs(v) for d in maps["before"].values() for v in d.values()))
    if "before" in maps and "after" in maps:
        row["speedup"] = round(row["before"]["seconds"] / row["after"]["seconds"], 2)
    return row


def before_change(
    model: torch.nn.Module, space: Any, scores: Any, x: tuple[torch.Tensor, ...], calib: torch.Tensor
) -> dict[str, dict[int, float]]:
    """The map as the code before this change computed it: every candidate width, each trial a deep
    copy pruned by `apply` (its own trace of the model and two shape-check forward passes)."""
    score = sensitivity.scorer(model, calib)
    return {
        g.id: sensitivity.monotone(
            {
                w: 0.0
                if w == g.size
                else score(apply(copy.deepcopy(model), Plan({g.id: sensitivity.keep_top(g, scores, w)}), x))
                for w in sensitivity.candidate_widths(g, ROUND_TO)
            }
        )
        for g in space.groups
    }


#: the A/B's arms: label -> (MEASURED, ESTIMATE_ABOVE) the map is made with
ARMS: dict[str, tuple[int | None, int | None]] = {
    "every": (None, None),
    "measured": (sensitivity.MEASURED, None),
    "estimated": (sensitivity.MEASURED, 0),
}


def ab_row(arch: str, data: str, steps: int, work: Path, arms: tuple[str, str]) -> dict[str, Any]:
    """The same FLOPs budget searched with each of two maps, fine-tuned alike: top-1 and the plans."""
    model = trained(arch)
    x = (torch.zeros(1, 3, 32, 32),)
    budget = f"{0.5 * count(model, x).flops / 1e6:.4f}MFLOPs"
    row: dict[str, Any] = {"model": arch, "budget": budget, "steps": steps, "arms": list(arms)}
    default = sensitivity.MEASURED, sensitivity.ESTIMATE_ABOVE
    try:
        for label in arms:
            sensitivity.MEASURED, sensitivity.ESTIMATE_ABOVE = ARMS[label]
            settings = Settings(
                budget=budget, data=data, method="l1", recover="finetune", steps=steps, precision="fp32", threads=1
            )
            t0 = time.perf_counter()
            result = compress(
                from_module(trained(arch), arch=arch, num_classes=10),
                settings,
                work / f"{arch}_{label}",
                progress=lambda _: None,
            )
            rep = result.report
            row[label] = {
                "top1_pruned": round(rep["accuracy"]["pruned"], 4),
                "top1_recovered": round(rep["accuracy"]["recovered"], 4),
                "flops_ratio": round(rep["final"]["flops"] / rep["baseline"]["flops"], 4),
                "widths": {g["group"]: g["kept"] for g in rep["groups"]},
                "sensitivity_s": rep["timings_s"].get("sensitivity"),
                "run_s": round(time.perf_counter() - t0, 1),
            }
            print(f"{arch}: {label}: top-1 {row[label]['top1_recovered']:.4f}", flush=True)
    finally:
        sensitivity.MEASURED, sensitivity.ESTIMATE_ABOVE = default
    first, second = arms
    row[f"top1_delta_{first}_minus_{second}"] = round(row[first]["top1_recovered"] - row[second]["top1_recovered"], 4)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the full CIFAR-10 npz (x_train, y_train, x_test, y_test)")
    p.add_argument("--zoo", action="store_true", help="add the timm and ultralytics rows (zoo environment)")
    p.add_argument("--skip-ab", action="store_true", help="the cost ladder only")
    p.add_argument("--skip-cost", action="store_true", help="the A/B only (the cost rows of the result file kept)")
    p.add_argument("--ab-models", nargs="+", default=["resnet20", "resnet56"], help="the A/B's trained models")
    p.add_argument(
        "--ab-arms", nargs=2, default=["estimated", "measured"], choices=sorted(ARMS), help="the two maps compared"
    )
    p.add_argument("--steps", type=int, default=780, help="fine-tuning steps of each A/B arm (780: two epochs)")
    p.add_argument("--every-limit", type=float, default=900.0, help="skip the every-width maps beyond this (s)")
    p.add_argument("--yolo-sizes", type=int, nargs="+", default=[320, 640], help="YOLOv8n input sizes (--zoo)")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    result: dict[str, Any] = header("sensitivity_cost") | {
        "measured_widths": sensitivity.MEASURED,
        "estimate_above": sensitivity.ESTIMATE_ABOVE,
        "calibration_groups": sensitivity.CALIBRATION_GROUPS,
        "round_to": ROUND_TO,
        "threads": 1,
        "cost": [],
        "ab": [],
    }
    if a.out.exists():  # keep the rows this run does not make (the zoo rows come from the other environment)
        earlier = json.loads(a.out.read_text())
        result["cost"] = [
            r | {"measured_at_commit": r.get("measured_at_commit", earlier.get("git", {}).get("commit"))}
            for r in earlier.get("cost", [])
            if r.get("zoo") != a.zoo or a.skip_cost
        ]
        # an earlier A/B of other arms or models stays (one row per model and pair of arms)
        result["ab"] = [
            r
            for r in earlier.get("ab", [])
            if a.skip_ab or r["model"] not in a.ab_models or r.get("arms", ["measured", "every"]) != a.ab_arms
        ]
    for name, model, shape, source in [] if a.skip_cost else ladder(a.data, a.zoo, a.yolo_sizes):
        if a.zoo and "yolo" not in name and "timm" not in name:
            continue
        result["cost"].append(cost_row(name, model, shape, source, a.data, a.every_limit) | {"zoo": a.zoo})
        atomic.write_text(a.out, json.dumps(result, indent=1))
    if not a.skip_ab:
        with tempfile.TemporaryDirectory() as tmp:
            for arch in a.ab_models:
                result["ab"].append(ab_row(arch, a.data, a.steps, Path(tmp), (a.ab_arms[0], a.ab_arms[1])))
                atomic.write_text(a.out, json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("cost", "ab")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
