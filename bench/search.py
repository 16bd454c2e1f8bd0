"""Uniform vs layerwise budget search at 70/50/35% of the baseline's measured latency (ORT CPU, 1 thread).

For each model and budget, `compress --method l1` runs once with `--search uniform` (one global
pruning level, binary-searched on measured latency) and once with `--search layerwise` (a width per
group from sensitivity x the per-layer latency table, search/layerwise.py). Each row records: the
final latency ratio re-timed interleaved against the unpruned model and its budget hit (ratio /
budget), candidates measured, search wall time (everything but recovery), FLOPs ratio, measured
speed-up / FLOPs reduction (1.0: latency falls exactly as FLOPs do), the layerwise predictor's error
on held-out plans and measured candidates, and, for the trained CIFAR-10 checkpoints, top-1 on the
full test set after the same short fine-tune (--steps) for every row.

The other models (MobileNetV2, VGG-16 at 32x32, ResNet-18 at 224x224) are random-init: their
latency rows are as meaningful as a trained model's, their accuracy is not and is not reported
(their data, for the sensitivity's calibration images, is the small CIFAR-10 subset: `--random-data`).
Every budget of one (model, search) pair runs in the same output folder, so the layerwise search's
sensitivity map is computed once (OUT/cache); the latency table's entries are timed once per
benchmark run (a fresh EDGEPRUNE_CACHE_DIR), so their cost shows in the first budget's search time.

After a model's rows, its latency predictor is checked on more plans than a run's four held-out
ones (`predictor_accuracy`): the table calibrated as `compress` does (6 spread plans), then 16
held-out plans (8 with each group at a random candidate width, residual blocks removed with
probability 1/4, and 8 more spread ones), every plan and the baseline timed interleaved in one
batch; the issue's goal is 90 % of them within 10 %.

A second section times one 3x3 conv (16x16 input, the ResNet-20 stage-2 shape) at every width from
40 to 64 channels in, interleaved: latency per FLOP by width multiple, the evidence for the
hardware-friendly widths (--round-to) this runtime wants.

    .venv/bin/python bench/search.py --data PATH/cifar10.npz [--models resnet20 mobilenetv2] \
        [--budgets 70% 50% 35%] [--searches layerwise]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import CIFAR10_PROTOCOL, carry_over, earlier_result, header, model_entry, run_row  # noqa: E402
from edgeprune import atomic, models  # noqa: E402
from edgeprune.pipeline.compress import Settings  # noqa: E402
from edgeprune.pipeline.counting import count  # noqa: E402
from edgeprune.pipeline.data import load_data  # noqa: E402
from edgeprune.pipeline.loading import from_module  # noqa: E402
from edgeprune.pipeline.measure import TargetMeasurer  # noqa: E402
from edgeprune.pipeline.methods import get_method  # noqa: E402
from edgeprune.pipeline.prune import blocks  # noqa: E402
from edgeprune.pipeline.prune.apply import apply  # noqa: E402
from edgeprune.pipeline.prune.space import discover  # noqa: E402
from edgeprune.pipeline.search import latency_table, layerwise, sensitivity  # noqa: E402
from edgeprune.pipeline.search.cost_model import CostModel  # noqa: E402
from edgeprune.runtime_bench import get_runtime  # noqa: E402
from edgeprune.runtime_bench.base import interleave  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "search.json"
#: model -> input size; the ones without a committed CIFAR-10 checkpoint run from random weights
MODELS = {"resnet20": 32, "resnet56": 32, "mobilenetv2": 32, "vgg16": 32, "resnet18": 224}
SEARCHES = ("uniform", "layerwise")


def random_entry(
    arch: str, size: int, work: Path, result: dict[str, Any]
) -> tuple[torch.nn.Module, TargetMeasurer, dict[str, Any]]:
    """A random-init `arch` (seed 0, 10 classes) with its measurer and result entry (no accuracy)."""
    torch.manual_seed(0)
    base = models.create(arch, num_classes=10).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    measurer = TargetMeasurer(get_runtime("ort-cpu", threads=1), (x,), work, repeats=400)
    entry = {
        "baseline": {"top1": None, **vars(count(base, (x,)))},
        "weights": "random init (seed 0): latency only",
        "rows": [],
    }
    result["models"][arch] = entry
    return base, measurer, entry


def predictor_accuracy(base: torch.nn.Module, x: torch.Tensor, work: Path, round_to: int = 16) -> dict[str, Any]:
    """The layerwise latency predictor's error on 16 held-out plans (module docstring), with the
    table and calibration built by the same functions `compress --search layerwise` uses."""
    inputs = (x,)
    space = discover(base, inputs)
    scores = get_method("l1").scores(base, space, inputs)
    candidates = {
        g.id: dict.fromkeys(sensitivity.candidate_widths(g, round_to), 0.0) for g in space.groups
    }  # widths only
    found = [b.name for b in blocks.find_blocks(base, inputs)]
    cost, sizes, runtime = (
        CostModel(base, space, inputs),
        {g.id: g.size for g in space.groups},
        get_runtime("ort-cpu", threads=1),
    )
    measurer = TargetMeasurer(runtime, inputs, work, repeats=50)
    reference = measurer.time(measurer.prepare(base, "accuracy_baseline"))
    baseline_ms = reference.stats.median
    measurer.repeats = int(min(200, max(30, np.ceil(2000.0 / baseline_ms))))  # about 2 s of timing per plan
    table = latency_table.build(base, inputs, cost, runtime, 1.0, baseline_ms, round_to)
    kinds = {
        "calibration": layerwise.calibration_plans(candidates, found),
        "random": layerwise.random_plans(candidates, found, 8, seed=2),
        "spread": layerwise.random_plans(candidates, found, 8, seed=3, spread=True),
    }
    plans = [(kind, plan) for kind, group in kinds.items() for plan in group]
    loaded = [reference] + [
        measurer.prepare(
            apply(copy.deepcopy(base), layerwise.plan_for(space, scores, w, removed=r), inputs), f"accuracy_{k}"
        )
        for k, (_, (w, r)) in enumerate(plans)
    ]
    stats = measurer.interleaved(loaded)
    ratios = [s.median / stats[0].median for s in stats[1:]]
    # the first plans
    calibrated = table.calibrated(kinds["calibration"], ratios[: len(kinds["calibration"])], sizes, cost)
    rows = [
        {
            "kind": kind,
            "removed_blocks": len(r),
            "measured": ratio,
            "predicted": (p := calibrated.predict(w, sizes, cost, r)),
            "error": p / ratio - 1.0,
        }
        for (kind, (w, r)), ratio in zip(plans, ratios)
    ]
    held = [row["error"] for row in rows if row["kind"] != "calibration"]
    a, b, c = calibrated.terms
    return {
        "coefficients": {"layers": a, "activations": b, "fixed": c},
        "baseline_ms": stats[0].median,
        "repeats": measurer.repeats,
        "held_out": len(held),
        "within_10pct": float(np.mean(np.abs(held) <= 0.10)),
        "max_abs_error": float(np.max(np.abs(held))),
        "plans": rows,
    }


def width_multiples(work: Path, widths: range = range(40, 65)) -> dict[str, Any]:
    """One 3x3 conv (c -> c channels, 16x16) at each width, timed interleaved: latency ratio to the
    64-channel conv divided by the FLOPs ratio, per width and averaged by the widest multiple of
    16/8/4 it is (1.0: latency scales with FLOPs; above: the width wastes time)."""
    x_for = {c: torch.randn(1, c, 16, 16) for c in widths}
    runtime = get_runtime("ort-cpu", threads=1)
    loaded, measurers = [], []
    for c in widths:
        m = TargetMeasurer(runtime, (x_for[c],), work, repeats=400)
        loaded.append(m.prepare(torch.nn.Conv2d(c, c, 3, padding=1).eval(), f"conv_{c}"))
        measurers.append(m)
    # each session has its own input shape: time them with their own inputs, interleaved round by round
    stats = interleave(runtime, [m.session for m in loaded], [ms.inputs_np for ms in measurers], 10, 400)
    ref = stats[-1].median
    per_flop = {c: (s.median / ref) / ((c * c) / (widths[-1] ** 2)) for c, s in zip(widths, stats)}
    classes: dict[str, list[float]] = {}
    for c, v in per_flop.items():
        key = next((f"multiple of {m}" for m in (16, 8, 4) if c % m == 0), "other")
        classes.setdefault(key, []).append(v)
    return {
        "shape": "Conv2d(c, c, 3, padding=1) on 1xcx16x16, ort-cpu 1 thread, interleaved, 400 runs each",
        "latency_per_flop_vs_64": {str(c): round(v, 4) for c, v in per_flop.items()},
        "median_ms": {str(c): s.median for c, s in zip(widths, stats)},
        "by_multiple": {
            k: {"widths": len(v), "mean": float(np.mean(v)), "max": float(np.max(v))} for k, v in classes.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the full CIFAR-10 .npz")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--budgets", nargs="+", default=["70%", "50%", "35%"])
    p.add_argument(
        "--steps", type=int, default=300, help="fine-tuning steps after pruning, every trained row (default 300)"
    )
    p.add_argument(
        "--searches",
        nargs="+",
        default=list(SEARCHES),
        choices=SEARCHES,
        help="the searches to run; the other searches' rows of each model are kept from the earlier file",
    )
    p.add_argument(
        "--skip-widths", action="store_true", help="leave out the width-multiple timing (the earlier file's is kept)"
    )
    p.add_argument(
        "--random-data",
        help="data for the random-init 32x32 models (their sensitivity's calibration images; their "
        "accuracy is not reported, so the full test set would only cost minutes per row); "
        "default: cifar10_small.npz beside --data",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    result: dict[str, Any] = {
        **header("search"),
        "budgets": a.budgets,
        "steps": a.steps,
        "method": "l1",
        "protocol": CIFAR10_PROTOCOL | {"recovery": f"finetune {a.steps} steps, trained checkpoints only"},
        "models": {},
        "skipped": {},
    }
    carry_over(a.out, result, a.models, ("budgets", "steps"))
    work = Path(tempfile.mkdtemp(prefix="bench_search_"))
    # latency tables timed afresh, once per run: their cost counts
    os.environ["EDGEPRUNE_CACHE_DIR"] = str(work / "cache")
    if a.skip_widths:
        found = earlier_result(a.out, result)
        if found and "width_multiples" in found[0]:
            result["width_multiples"] = {**found[0]["width_multiples"], "measured_at_commit": found[1]}
    else:
        result["width_multiples"] = width_multiples(work)
        log(f"width multiples: {result['width_multiples']['by_multiple']}")
        atomic.write_json(a.out, result)
    earlier = earlier_result(a.out, result, ("budgets", "steps"))
    cifar = load_data(a.data, batch_size=128)
    for arch in a.models:
        size = MODELS[arch]
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        found = model_entry(arch, cifar, x, work, result, log) if size == 32 else None
        trained = found is not None
        if not trained:
            result["skipped"].pop(arch, None)
            found = random_entry(arch, size, work, result)
        base, measurer, entry = found
        data = (
            a.data
            if trained
            else (a.random_data or str(Path(a.data).with_name("cifar10_small.npz")))
            if size == 32
            else "bench.data224:cifar10_224"
        )
        if earlier is not None:  # rows of searches not re-run this time, with the commit they were measured at
            entry["rows"] += [
                row | {"measured_at_commit": row.get("measured_at_commit", earlier[1])}
                for row in earlier[0].get("models", {}).get(arch, {}).get("rows", [])
                if row["search"] not in a.searches
            ]
        for search in a.searches:
            for budget in a.budgets:
                settings = Settings(
                    precision="fp32",
                    budget=budget,
                    method="l1",
                    search=search,
                    data=data,
                    recover="finetune" if trained else "none",
                    steps=a.steps if trained else None,
                )
                loaded = from_module(copy.deepcopy(base), x, arch=arch, num_classes=10)
                row = run_row(
                    f"{arch} {search} {budget}",
                    loaded,
                    settings,
                    base,
                    measurer,
                    x,
                    work,
                    log,
                    out=work / f"{arch}_{search}",
                )
                fraction = float(budget.rstrip("%")) / 100
                if "error" not in row:
                    row |= {
                        "budget_hit": row["latency_ratio"] / fraction,
                        "speedup_per_flop": (row["flops"] / entry["baseline"]["flops"]) / row["latency_ratio"],
                    }
                    if not trained:
                        row["top1"] = row["top1_pruned"] = None
                entry["rows"].append(row | {"search": search, "budget": budget})
                atomic.write_json(a.out, result)
        entry["predictor_accuracy"] = accuracy = predictor_accuracy(base, x, work)
        log(
            f"{arch}: latency predictor within 10 % on {accuracy['within_10pct']:.0%} of {accuracy['held_out']} "
            f"held-out plans (max {accuracy['max_abs_error']:.1%})"
        )
        atomic.write_json(a.out, result)
    atomic.write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
