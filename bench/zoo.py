"""zoo: the models users bring (torchvision, timm, Hugging Face, ultralytics), pruned at ratio 0.5.

Each model of the sample (bench/zoo_models.py says how it is drawn) runs in its own process with a
time limit, twice: once through `edgeprune.prune(model, x, ratio=0.5)`'s pipeline
(`prune_to_ratio`, default analysis time bound) and once through torch-pruning's `MetaPruner` at
the same ratio (L1 magnitude, the output layers ignored), for the parameter ratio it reaches. Per
model and tool: the outcome (pruned / left whole with the reasons / clean error / crash / hang), the
seconds, params and FLOPs ratios. For edgeprune also: the groups left whole and why, whether the
forward shapes are unchanged, ONNX export + ONNX Runtime matching the pruned PyTorch model, and the
speed-up divided by the FLOPs reduction on ORT CPU (1 thread, graph optimization ALL, baseline and
pruned ONNX timed interleaved, medians; BENCHMARKING.md).

A model *fully passes* when its parameters are at most 0.8x the original's, the forward shapes are
unchanged, the ONNX export worked and ORT matches the pruned model. `--compress` adds rows for
`edgeprune.compress(budget=..., runtime="ort-cpu")` on a few models (`COMPRESS_BUDGETS`).

Needs the zoo environment: `make zoo`, or
    ../shared/zoo/make-zoo-venv.sh .venv-zoo && .venv-zoo/bin/python bench/zoo.py
    .venv-zoo/bin/python bench/zoo.py --models tv:swin_t,hf:bert --out /tmp/zoo.json
Results go to bench/results/zoo.json, rewritten atomically after every model; rows of models and
tools not re-run are kept (each tool's row with the commit it was measured at).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_OUT = REPO / "bench" / "results" / "zoo.json"
RATIO = 0.5
FULL_PASS_PARAMS = 0.8
#: the hard wall-clock limit of one model's process; over it, the row is a hang
PROCESS_LIMIT_S = {"edgeprune": 900, "tp": 300, "compress": 2400}
#: how long the interleaved timing of baseline + pruned may take, at most (repeats adapt)
TIMING_BUDGET_S = 20.0
#: `compress` rows: the issue's transformers and YOLO at 50 %, grouped-convolution nets (issue 20) at 35 %
COMPRESS_BUDGETS = {
    "hf:distilbert": "50%",
    "hf:bert": "50%",
    "hf:vit": "50%",
    "yolo:yolo11n": "50%",
    "timm:regnetx_016": "35%",
    "timm:resnext26ts": "35%",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated specs (default: the whole sample)")
    p.add_argument("--tools", default="edgeprune,tp,compress", help="edgeprune, tp (torch-pruning), compress")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--redraw", action="store_true", help="draw the timm sample again from timm.list_models()")
    p.add_argument("--list", action="store_true", help="print the sample and exit")
    p.add_argument(
        "--table", action="store_true", help="print the summary tables of --out as markdown (bench/README.md) and exit"
    )
    p.add_argument(
        "--timing-budget",
        type=float,
        default=TIMING_BUDGET_S,
        help=f"seconds of interleaved timing per model (default {TIMING_BUDGET_S:g}; less for a quick survey)",
    )
    p.add_argument("--worker", nargs=3, metavar=("TOOL", "SPEC", "RESULT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return _worker(*a.worker, timing_budget=a.timing_budget)
    if a.table:
        print(table(json.loads(a.out.read_text())))
        return 0
    from bench import zoo_models

    specs = (
        a.models.split(",")
        if a.models
        else zoo_models.sample(a.redraw) + [s for s in COMPRESS_BUDGETS if s.startswith("timm:")]
    )
    if a.list:
        print("\n".join(specs))
        return 0
    return _drive(specs, a.tools.split(","), a.out, a.timing_budget)


# ---------------------------------------------------------------------------------------- driver


def _drive(specs: list[str], tools: list[str], out: Path, timing_budget: float) -> int:
    from bench.common import earlier_result, header
    from edgeprune import atomic

    result: dict[str, Any] = header("zoo") | {
        "ratio": RATIO,
        "full_pass_params": FULL_PASS_PARAMS,
        "process_limit_s": PROCESS_LIMIT_S,
        "timing_budget_s": timing_budget,
        "protocol": {
            "runtime": "ort-cpu",
            "threads": 1,
            "graph_optimization": "ALL",
            "latency": "median, baseline and pruned ONNX timed interleaved in one process",
        },
        "models": {},
    }
    found = earlier_result(out, result, ("ratio",))
    if found:
        earlier, commit = found
        for spec, row in earlier.get("models", {}).items():
            for tool_row in (v for v in row.values() if isinstance(v, dict)):  # each tool's row keeps its commit
                tool_row.setdefault("measured_at_commit", commit)
            result["models"][spec] = row
    for i, spec in enumerate(specs):
        row = result["models"].get(spec, {})
        for tool in tools:
            if tool == "compress" and spec not in COMPRESS_BUDGETS:
                continue
            t0 = time.perf_counter()
            row[tool] = _run_worker(tool, spec, timing_budget)
            print(
                f"[{i + 1}/{len(specs)}] {spec} {tool}: {_short(row[tool])} ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
        result["models"][spec] = row
        result["summary"] = summarize(result["models"])
        atomic.write_json(out, result)
    print(json.dumps(result["summary"], indent=1))
    return 0


def _run_worker(tool: str, spec: str, timing_budget: float) -> dict[str, Any]:
    """One tool on one model in a fresh process; a process over its limit is a hang."""
    with tempfile.TemporaryDirectory(prefix="zoo_") as tmp:
        res = Path(tmp) / "row.json"
        limit = PROCESS_LIMIT_S[tool]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", tool, spec, str(res), "--timing-budget", str(timing_budget)],
                capture_output=True,
                text=True,
                timeout=limit,
                env=os.environ | {"OMP_NUM_THREADS": "1"},
            )
        except subprocess.TimeoutExpired:
            return {"outcome": "hang", "seconds": round(time.perf_counter() - t0, 1), "limit_s": limit}
        if res.exists():
            return json.loads(res.read_text())
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {
            "outcome": "crash",
            "error": f"process died (exit {proc.returncode}): {' | '.join(tail)}",
            "seconds": round(time.perf_counter() - t0, 1),
        }


def _short(row: dict[str, Any]) -> str:
    keys = ("outcome", "params_ratio", "flops_ratio", "full_pass", "speedup_per_flops", "met", "latency_ratio", "error")
    return ", ".join(
        f"{k}={row[k]:.3f}" if isinstance(row.get(k), float) else f"{k}={str(row[k])[:160]}"
        for k in keys
        if row.get(k) is not None
    )


def summarize(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Counts of outcomes and the medians the issue's bar is stated in."""
    import numpy as np

    ep = {s: r["edgeprune"] for s, r in models.items() if "edgeprune" in r}
    outcomes: dict[str, int] = {}
    for r in ep.values():
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    both = [
        s
        for s, r in models.items()
        if r.get("edgeprune", {}).get("params_ratio") is not None and r.get("tp", {}).get("params_ratio") is not None
    ]
    speed = [r["speedup_per_flops"] for r in ep.values() if r.get("speedup_per_flops") is not None]

    def med(v: list[float]) -> float | None:
        return round(float(np.median(v)), 4) if v else None

    return {
        "models": len(ep),
        "full_pass": sum(bool(r.get("full_pass")) for r in ep.values()),
        "full_pass_share": round(sum(bool(r.get("full_pass")) for r in ep.values()) / max(len(ep), 1), 4),
        "outcomes": outcomes,
        "median_speedup_per_flops": med(speed),
        "timed": len(speed),
        "median_params_ratio_edgeprune": med([ep[s]["params_ratio"] for s in both]),
        "median_params_ratio_tp": med([models[s]["tp"]["params_ratio"] for s in both]),
        "both_pruned": len(both),
        # torch-pruning changed the output shapes of some models (a broken model, not a smaller one)
        "median_params_ratio_edgeprune_tp_shapes_kept": med(
            [ep[s]["params_ratio"] for s in both if models[s]["tp"].get("shape_equal")]
        ),
        "median_params_ratio_tp_shapes_kept": med(
            [models[s]["tp"]["params_ratio"] for s in both if models[s]["tp"].get("shape_equal")]
        ),
        "both_pruned_tp_shapes_kept": sum(bool(models[s]["tp"].get("shape_equal")) for s in both),
        "slowest": sorted(((r.get("seconds", 0.0), s) for s, r in ep.items()), reverse=True)[:10],
    }


def table(result: dict[str, Any]) -> str:
    """bench/README.md's zoo tables, from a result file: per family, the models that did not fully
    pass and why, the compress rows, the slowest models and where their time went."""
    models = result["models"]
    fam: dict[str, list[str]] = {}
    for spec in models:
        fam.setdefault(spec.partition(":")[0], []).append(spec)

    def num(v: float | None) -> str:
        return "–" if v is None else f"{v:.4f}"  # as summarize rounds it

    lines = [
        (
            "| family | models | fully pass | pruned, not fully | left whole | clean error | crash | hang "
            "| median params (edgeprune / tp, both pruned) | median speed-up ÷ FLOPs reduction (timed) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f, specs in [*fam.items(), ("all", list(models))]:
        sm = summarize({spec: models[spec] for spec in specs})
        o = sm["outcomes"]
        lines.append(
            f"| {f} | {sm['models']} | {sm['full_pass']} | {o.get('pruned', 0) - sm['full_pass']} | "
            f"{o.get('left whole', 0)} | {o.get('clean error', 0)} | {o.get('crash', 0)} | {o.get('hang', 0)} | "
            f"{num(sm['median_params_ratio_edgeprune'])} / {num(sm['median_params_ratio_tp'])} ({sm['both_pruned']}) | "
            f"{num(sm['median_speedup_per_flops'])} ({sm['timed']}) |"
        )
    lines += ["", "| model | outcome | params | why not a full pass |", "|---|---|---|---|"]
    for spec, row in models.items():
        r = row.get("edgeprune", {})
        if r and not r.get("full_pass"):
            why = (
                r.get("error")
                or r.get("onnx_error")
                or ("output shapes changed" if r.get("shape_equal") is False else "")
                or (
                    f"params {r['params_ratio']:.2f} > {FULL_PASS_PARAMS}; left whole: "
                    + "; ".join(sorted({v.split(":")[0] for v in r.get("left_whole", {}).values()}))
                    if r.get("params_ratio")
                    else ""
                )
            )
            params = f"{r['params_ratio']:.3f}" if r.get("params_ratio") is not None else "–"
            lines.append(f"| {spec} | {r['outcome']} | {params} | {why[:220]} |")
    lines += [
        "",
        "| model | budget | met | latency ratio | FLOPs | params | speed-up ÷ FLOPs reduction | candidates | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, row in models.items():
        c = row.get("compress")
        if c and c.get("outcome") == "compressed":
            lines.append(
                f"| {spec} | {c['budget']} | {'yes' if c['met'] else 'no'} | {c['latency_ratio']:.3f} | "
                f"{c['flops_ratio']:.3f} | {c['params_ratio']:.3f} | "
                f"{c['speedup_per_flops']:.3f} | {c['candidates']} | {c.get('seconds', 0):.0f} |"
            )
        elif c:
            lines.append(
                f"| {spec} | {COMPRESS_BUDGETS.get(spec, '')} | {c['outcome']} | {str(c.get('error', ''))[:200]} | | | "
                f"| | {c.get('seconds', 0):.0f} |"
            )
    lines += ["", "| model | seconds | longest steps (s) |", "|---|---|---|"]
    for sec, spec in summarize(models)["slowest"]:
        steps = models[spec]["edgeprune"].get("steps_s", {})
        top = [
            *sorted(steps.items(), key=lambda kv: -kv[1])[:3],
            ("build, export, ORT check, timing", sec - sum(steps.values())),
        ]
        lines.append(f"| {spec} | {sec:.0f} | {', '.join(f'{k} {v:.0f}' for k, v in top)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- worker


def _worker(tool: str, spec: str, result_path: str, timing_budget: float) -> int:
    import torch

    torch.set_num_threads(1)
    from edgeprune import atomic

    t0 = time.perf_counter()
    try:
        row = {"edgeprune": lambda s: _edgeprune_row(s, timing_budget), "tp": _tp_row, "compress": _compress_row}[tool](
            spec
        )
    except Exception as err:  # noqa: BLE001 - the row says which kind of failure it was
        from edgeprune.errors import EdgepruneError, first_line

        clean = isinstance(err, EdgepruneError)
        row = {"outcome": "clean error" if clean else "crash", "error": f"{type(err).__name__}: {first_line(err, 300)}"}
        if not clean:
            row["traceback"] = traceback.format_exc().splitlines()[-8:]
    row["seconds"] = round(time.perf_counter() - t0, 2)
    atomic.write_json(result_path, row)
    return 0


def _edgeprune_row(spec: str, timing_budget: float) -> dict[str, Any]:

    from bench import zoo_models
    from edgeprune import modelrun
    from edgeprune.errors import EdgepruneError, first_line
    from edgeprune.pipeline.counting import count
    from edgeprune.pipeline.loading import from_module
    from edgeprune.pipeline.oneshot import prune_to_ratio

    model, x = zoo_models.build(spec)
    row: dict[str, Any] = {}
    loaded = from_module(model, x)
    base = count(loaded.model, x)
    ref_shapes = modelrun.output_shapes(modelrun.run(loaded.model, x))
    res = prune_to_ratio(loaded, RATIO)
    row["steps_s"] = {k: round(v, 2) for k, v in res.seconds.items()}
    row["groups"] = len(res.space.groups)
    heads = [k for k in res.plan.groups.values() if k.kind == "heads"]
    row["heads"] = {
        "modules": len(heads),
        "removed": sum(len(k.removed) for k in heads),
        "of": sum(k.size for k in heads),
    }
    row["swapped"] = len(loaded.swapped)
    row["left_whole"] = {s.id: s.reason for s in res.space.skipped}
    after = count(res.model, x)
    row["params_ratio"] = after.params / base.params
    row["flops_ratio"] = after.flops / base.flops
    row["params_m"] = round(base.params / 1e6, 3)
    row["gflops"] = round(base.flops / 1e9, 3)
    row["outcome"] = "pruned" if after.params < base.params else "left whole"
    row["shape_equal"] = modelrun.output_shapes(modelrun.run(res.model, x)) == ref_shapes
    with tempfile.TemporaryDirectory(prefix="zoo_onnx_") as tmp:
        try:
            base_art, pruned_art = (
                _export_checked(loaded.model, x, Path(tmp) / "base.onnx"),
                _export_checked(res.model, x, Path(tmp) / "pruned.onnx"),
            )
            row["onnx"] = True
            row["ort_max_diff"] = pruned_art[1]
        except EdgepruneError as err:
            row["onnx"] = False
            row["onnx_error"] = first_line(err, 300)
        row["full_pass"] = bool(row["onnx"] and row["shape_equal"] and row["params_ratio"] <= FULL_PASS_PARAMS)
        if row["onnx"] and row["outcome"] == "pruned":
            row |= _timing(base_art[0], pruned_art[0], x, base.flops / after.flops, timing_budget)
    return row


def _export_checked(model: Any, x: tuple, path: Path) -> tuple[Path, float]:
    """Export to ONNX and check ONNX Runtime against PyTorch (raises EdgepruneError over tolerance)."""
    from edgeprune.exporters import OnnxExporter

    exporter = OnnxExporter()
    artifact = exporter.export(model, x, path)
    return artifact.path, exporter.check(artifact, model, x)


def _timing(base: Path, pruned: Path, x: tuple, flops_reduction: float, budget_s: float) -> dict[str, Any]:
    """Speed-up of the pruned ONNX over the baseline on ort-cpu (1 thread), timed interleaved."""
    from edgeprune.runtime_bench import get_runtime
    from edgeprune.runtime_bench.base import interleave

    rt = get_runtime("ort-cpu", threads=1)
    sessions = [rt.load(str(base)), rt.load(str(pruned))]
    inputs = [t.numpy() for t in x]
    probe = rt.measure(sessions[0], inputs, 2, 3)
    repeats = int(min(60, max(10, budget_s * 1e3 / (1.6 * probe.median))))
    b, p = interleave(rt, sessions, [inputs, inputs], warmup=3, repeats=repeats)
    speedup = b.median / p.median
    return {
        "baseline_ms": round(b.median, 4),
        "pruned_ms": round(p.median, 4),
        "speedup": speedup,
        "flops_reduction": flops_reduction,
        "speedup_per_flops": speedup / flops_reduction,
        "timing": {"n": p.n, "spread": [round(b.spread, 3), round(p.spread, 3)], "noise": [b.noise, p.noise]},
    }


def _tp_row(spec: str) -> dict[str, Any]:
    """torch-pruning 1.6's MetaPruner at the same ratio, as its README shows it (L1, outputs ignored)."""
    import torch
    import torch_pruning as tp

    from bench import zoo_models
    from edgeprune import modelrun
    from edgeprune.pipeline.counting import count
    from edgeprune.pipeline.prune.space import output_layers

    model, x = zoo_models.build(spec)
    ref_shapes = modelrun.output_shapes(modelrun.run(model, x))
    base = count(model, x)
    ignored = [model.get_submodule(n) for n in output_layers(model, x)]
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=RATIO,
        ignored_layers=ignored,
        round_to=16,
    )
    with torch.enable_grad():
        pruner.step()
    after = count(model, x)
    return {
        "outcome": "pruned",
        "params_ratio": after.params / base.params,
        "flops_ratio": after.flops / base.flops,
        "shape_equal": modelrun.output_shapes(modelrun.run(model, x)) == ref_shapes,
    }


def _compress_row(spec: str) -> dict[str, Any]:
    """`edgeprune.compress(budget=...)` on ort-cpu, 1 thread: met or not, at what measured ratio."""
    import edgeprune
    from bench import zoo_models

    model, x = zoo_models.build(spec)
    budget = COMPRESS_BUDGETS[spec]
    with tempfile.TemporaryDirectory(prefix="zoo_compress_") as tmp:
        res = edgeprune.compress(model, budget=budget, example_inputs=x, runtime="ort-cpu", out_dir=tmp)
    rep = res.report
    speedup_per_flops = res.speedup * res.flops_ratio
    return {
        "outcome": "compressed",
        "budget": budget,
        "met": res.met,
        "latency_ratio": 1 / res.speedup,
        "flops_ratio": res.flops_ratio,
        "speedup_per_flops": speedup_per_flops,
        "params_ratio": rep["final"]["params"] / rep["baseline"]["params"],
        "candidates": rep["search"]["candidates_measured"],
        "stop_reason": rep["search"]["stop_reason"],
        "left_whole": len(rep["left_whole"]),
        "timings_s": rep["timings_s"],
        "decision": {
            k: (rep["budget"].get("decision") or {}).get(k)
            for k in ("verdict", "estimate", "low", "high", "rounds", "busy")
        },
    }


if __name__ == "__main__":
    sys.exit(main())
