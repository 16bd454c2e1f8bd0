"""budget_hit: does the budget search land just under a relative latency budget, and how fast?

For each bundled model (random-init weights, torch.manual_seed(0), 10 classes: latency does not
depend on training) and each relative budget ("70%", "40%" of the measured baseline latency), run
the whole pipeline (`edgeprune.pipeline.compress.compress`) on ort-cpu with 1 thread and default
settings (round_to 16, tol 5%, at most 8 measured candidates), and record how close the final model
lands to its budget, how many candidates the search measured, and why it stopped.

A relative budget is judged by the tool on the ratio final/baseline timed *interleaved* in the
final stage (../shared/BENCHMARKING.md); this file records that ratio against the fraction, and
also final_ms against the resolved budget in ms (baseline-stage median x fraction), which mixes
two separate timings and so carries the machine's drift.

    .venv/bin/python bench/budget_hit.py                       # everything, writes bench/results/budget_hit.json
    .venv/bin/python bench/budget_hit.py --models resnet20 --budgets 70% --out /tmp/trial.json

Run directories go to a temporary folder, removed at the end unless --keep-runs.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from bench.common import header  # noqa: E402
from edgeprune import atomic, environment, models  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.pipeline.compress import MIN_TIMED_S, Settings, compress  # noqa: E402
from edgeprune.pipeline.loading import from_module  # noqa: E402

DEFAULT_MODELS = ("resnet20", "resnet56", "mobilenetv2", "vgg16", "resnet18")
DEFAULT_BUDGETS = ("70%", "40%")
DEFAULT_OUT = REPO / "bench" / "results" / "budget_hit.json"
WITHIN = 0.10  # "landed within 10% under the budget"
INTERLEAVE_ROUNDS = 10  # TargetMeasurer.interleaved's default, used by the final stage


def _stats(d: dict[str, Any]) -> dict[str, Any]:
    """The summary of a latency_ms dict, plus the per-round medians of an interleaved timing."""
    out = {k: d[k] for k in ("median", "p90", "mean", "std", "n", "warmup", "spread", "other_cpu_s")}
    runs = d.get("runs_ms") or []
    if runs:
        chunk = -(-len(runs) // INTERLEAVE_ROUNDS)
        out["round_medians_ms"] = [float(np.median(runs[i:i + chunk])) for i in range(0, len(runs), chunk)]
    return out


def _step(s: dict[str, Any]) -> dict[str, Any]:
    lat = s.get("latency_ms") or {}
    return {
        "index": s["index"],
        "level": s["level"],
        "predicted_flops": s["predicted_flops"],
        "value_ms": s["value"],
        "ratio_to_baseline": s.get("ratio_to_baseline"),
        "within": s["within_budget"],
        "remeasured": s["remeasured"],
        "median_ms": lat.get("median"),
        "p90_ms": lat.get("p90"),
        "n": lat.get("n"),
        "spread": lat.get("spread"),
        "other_cpu_s": lat.get("other_cpu_s"),
        "seconds": s["seconds"],
    }


def _row(name: str, shape: tuple[int, ...], budget: str, rep: dict[str, Any], wall_s: float) -> dict[str, Any]:
    b, base, fin = rep["budget"], rep["baseline"], rep["final"]
    base_ms, final_ms = base["latency_ms"]["median"], fin["latency_ms"]["median"]
    ratio = final_ms / base_ms
    frac = float(budget.rstrip("%")) / 100 if budget.endswith("%") else None
    flops_ratio = fin["flops"] / base["flops"]
    steps = rep["search"]["steps"]
    ratio_vs_fraction = ratio / frac if frac else None
    return {
        "model": name,
        "input_shape": list(shape),
        "budget": budget,
        "fraction": frac,
        "budget_ms": b["value"],  # resolved: baseline-stage median x fraction
        "baseline_stage_median_ms": b["value"] / frac if frac else None,
        "budget_describe": b["describe"],
        "baseline": _stats(base["latency_ms"]),  # timed interleaved with the final model
        "final": _stats(fin["latency_ms"]),
        "final_over_budget": final_ms / b["value"],
        "ratio": ratio,  # final/baseline, interleaved: what the tool judges a relative budget on
        "ratio_over_fraction": ratio_vs_fraction,
        "met": b["met"],
        "within_10pct": bool(b["met"] and ratio_vs_fraction is not None and ratio_vs_fraction >= 1 - WITHIN),
        "within_10pct_by_ms": bool(1 - WITHIN <= final_ms / b["value"] <= 1.0),
        "candidates_measured": rep["search"]["candidates_measured"],
        "remeasures": sum(1 for s in steps if s.get("remeasured")),
        "steps": [_step(s) for s in steps],
        "stop_reason": rep["search"]["stop_reason"],
        "wall_s": round(wall_s, 1),
        "timings_s": rep["timings_s"],
        "flops": {"baseline": base["flops"], "final": fin["flops"]},
        "params": {"baseline": base["params"], "final": fin["params"]},
        "flops_ratio": flops_ratio,
        "params_ratio": fin["params"] / base["params"],
        "latency_ratio": ratio,
        "speedup": rep["speedup"],
        # latency speed-up per FLOPs reduction: 1.0 means latency fell exactly as much as FLOPs
        "speedup_per_flops_reduction": (1 / ratio) / (1 / flops_ratio),
        "max_abs_diff": fin["max_abs_diff"],
    }


def run_one(name: str, budget: str, work: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = models.create(name, num_classes=10)
    shape = models.default_input_shape(name)
    loaded = from_module(model, input_shape=shape, arch=name, num_classes=10, source=f"registry:{name} (random init, seed 0)")
    out_dir = work / f"{name}_{budget.replace('%', 'pct')}"
    tag = f"[{name} {budget}]"
    t0 = time.perf_counter()
    try:
        res = compress(loaded, Settings(budget=budget), out_dir, progress=lambda line: print(f"{tag} {line}", flush=True))
    except Exception as err:  # noqa: BLE001 - record every failure, keep measuring the other runs
        wall = time.perf_counter() - t0
        print(f"{tag} FAILED after {wall:.1f}s: {type(err).__name__}: {err}", flush=True)
        return {
            "model": name, "input_shape": list(shape), "budget": budget, "wall_s": round(wall, 1),
            "error": {"type": type(err).__name__, "message": str(err), "edgeprune_error": isinstance(err, EdgepruneError),
                      "traceback": traceback.format_exc()},
            "met": False, "within_10pct": False,
        }
    row = _row(name, shape, budget, res.report, time.perf_counter() - t0)
    print(f"{tag} final {row['final']['median']:.3f} ms, ratio {row['ratio']:.3f} vs {row['fraction']:.2f} "
          f"({'met' if row['met'] else 'MISSED'}), {row['candidates_measured']} candidates, {row['wall_s']:.0f}s", flush=True)
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    return {
        "runs": len(rows),
        "errors": len(rows) - len(ok),
        "met": sum(1 for r in ok if r["met"]),
        "within_10pct_under": sum(1 for r in ok if r["within_10pct"]),
        "max_candidates_measured": max((r["candidates_measured"] for r in ok), default=0),
        "total_candidates_measured": sum(r["candidates_measured"] for r in ok),
        "remeasures": sum(r["remeasures"] for r in ok),
        "missed": [f"{r['model']} {r['budget']}" for r in ok if not r["met"]],
        "not_within_10pct": [f"{r['model']} {r['budget']}" for r in ok if r["met"] and not r["within_10pct"]],
        "failed": [f"{r['model']} {r['budget']}: {r['error']['type']}: {r['error']['message']}" for r in rows if "error" in r],
        "total_wall_s": round(sum(r["wall_s"] for r in rows), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help=f"subset of {', '.join(DEFAULT_MODELS)} (any registry name)")
    p.add_argument("--budgets", nargs="+", default=list(DEFAULT_BUDGETS), help="relative budgets, e.g. 70%% 40%%")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON (written atomically after every run)")
    p.add_argument("--keep-runs", action="store_true", help="keep the run directories (printed at the end)")
    args = p.parse_args(argv)
    models_ = [m for part in args.models for m in part.split(",") if m]
    budgets = [b for part in args.budgets for b in part.split(",") if b]
    for b in budgets:
        if not b.strip().endswith("%"):
            p.error(f"budget {b!r}: this benchmark is about relative budgets, give e.g. 70%")
    for m in models_:
        models.default_input_shape(m)  # unknown names fail here, before anything is measured

    defaults = Settings(budget="50%")  # any valid budget: only the defaults are read
    result: dict[str, Any] = {
        **header("budget_hit"),  # git taken when the package was imported, i.e. the code every run used
        "protocol": {
            "runtime": "ort-cpu", "graph_optimization": "ALL", "threads": defaults.threads,
            "inter_op_threads": 1, "execution_mode": "sequential",
            "warmup": defaults.warmup, "repeats": defaults.repeats,
            "repeats_rule": f"max(repeats, ceil({MIN_TIMED_S}s / baseline median)), at most 2000, after the baseline stage",
            "statistic": "median", "final": f"baseline and final timed interleaved, {INTERLEAVE_ROUNDS} rounds",
            "search": {"round_to": defaults.round_to, "tol": defaults.tol, "max_candidates": defaults.max_candidates,
                       "method": defaults.method},
            "weights": "random init, torch.manual_seed(0), num_classes=10",
            "within_10pct": "met and interleaved ratio >= 0.9 x fraction",
        },
        "models": models_, "budgets": budgets, "runs": [], "summary": {},
    }
    work = Path(tempfile.mkdtemp(prefix="budget_hit_"))
    print(f"run directories under {work}", flush=True)
    try:
        for name in models_:
            for budget in budgets:
                result["runs"].append(run_one(name, budget, work))
                result["summary"] = summary(result["runs"])
                result["environment"]["finished"] = environment.describe()["date"]
                atomic.write_json(args.out, result)
    finally:
        if args.keep_runs:
            print(f"run directories kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    s = result["summary"]
    print(f"\n{s['met']}/{s['runs']} met, {s['within_10pct_under']} within 10% under, max {s['max_candidates_measured']} candidates, "
          f"{s['errors']} errors; wrote {args.out}")
    return 0 if s["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
