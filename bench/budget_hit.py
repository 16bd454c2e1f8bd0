r"""budget_hit: does the default search land within 5 % under a relative latency budget, on a quiet
machine and beside a CPU hog, and does it spend the budget on accuracy?

Latency rows (`--passes quiet loaded`): for each model and budget (70 %, 50 %, 35 % of the
baseline's measured latency) one `compress` with default settings (the guided search, ort-cpu, one
thread, no --data), first on the machine as it is, then with one busy process per core started
and stopped by this script. Each row records the tool's own final verdict (the median ratio of
interleaved rounds, its interval, met), that ratio over the budget, the candidates measured, the
search's seconds, and the CPU time other processes used during the search's and the final's
timings. Every row is then re-timed by this script, right after it, independently of the tool and
with the hog stopped (SIGSTOP; fresh sessions of the baseline and the published model.onnx, the same
interleaved rule): a MET whose re-timed ratio is decided over the budget would be a wrong MET. A
re-check that contradicts the tool is timed twice more, and the majority of the three stands.

Models: the trained CIFAR-10 ResNet-20 and ResNet-56 shipped in edgeprune/assets (32x32); the
registry's MobileNetV2 and ResNet-18 at 224x224 (random init, seed 0: latency does not depend on
training); and, in the zoo environment (../shared/zoo/make-zoo-venv.sh), timm's efficientnet_b0,
mobilenetv3_large_100 and regnetx_004 at 224x224 (bench/zoo_models.py). Run it with the zoo venv's
python; elsewhere the zoo rows are recorded as skipped.

Accuracy rows (`--accuracy --data cifar10.npz`): the trained ResNet-20 and ResNet-56 at 50 %, each
search (guided, the default; uniform; layerwise) followed by the same 3-epoch fine-tune, top-1 on
the full test set, at each one's latency re-timed the same way; the guided search's extra cost
(its sensitivity map, and its per-layer latency table timed on an empty cache) is recorded beside
the recovery's seconds.

    flock /tmp/edgeprune-timing.lock .venv-zoo/bin/python bench/budget_hit.py              # latency rows, both passes
    flock /tmp/edgeprune-timing.lock .venv-zoo/bin/python bench/budget_hit.py --passes --accuracy \
        --data ../shared/data/cifar10/cifar10.npz
    .venv/bin/python bench/budget_hit.py --models resnet20 --budgets 50% --passes quiet --out /tmp/trial.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from bench.common import earlier_result, header, trained  # noqa: E402
from edgeprune import atomic, models  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.pipeline import decision  # noqa: E402
from edgeprune.pipeline.compress import MIN_TIMED_S, Settings, compress  # noqa: E402
from edgeprune.pipeline.loading import LoadedModel, from_module  # noqa: E402
from edgeprune.runtime_bench import get_runtime  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "budget_hit.json"
DEFAULT_BUDGETS = ("70%", "50%", "35%")
#: name -> (how to build it, input side); the zoo models need the zoo environment
MODELS: dict[str, tuple[str, int]] = {
    "resnet20": ("trained", 32),
    "resnet56": ("trained", 32),
    "mobilenetv2": ("registry", 224),
    "resnet18": ("registry", 224),
    "timm:efficientnet_b0": ("zoo", 224),
    "timm:mobilenetv3_large_100": ("zoo", 224),
    "timm:regnetx_004": ("zoo", 224),
}
ACCURACY_MODELS = ("resnet20", "resnet56")
SEARCHES = ("guided", "uniform", "layerwise")
WINDOW = 0.95  # the goal: final ratio >= 0.95 of the budget (quiet), 0.90 (loaded)


def build(name: str) -> LoadedModel:
    """The model of a row, as `compress` gets it."""
    kind, side = MODELS[name]
    if kind == "zoo":
        from bench.zoo_models import build as zoo_build  # imports timm: the zoo environment only

        model, inputs = zoo_build(name)
        return from_module(model, inputs, source=f"{name} (random init, seed 0)")
    torch.manual_seed(0)
    model = trained(name) if kind == "trained" else models.create(name, num_classes=10).eval()
    weights = "trained on CIFAR-10 (edgeprune/assets)" if kind == "trained" else "random init, seed 0"
    return from_module(
        model, input_shape=(1, 3, side, side), arch=name, num_classes=10, source=f"registry:{name} ({weights})"
    )


@contextlib.contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """The hog stopped (SIGSTOP) while the block runs, resumed after: a row's re-check right after it."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(0.5 if pids else 0.0)
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def cpu_hog(enabled: bool) -> Iterator[list[int]]:
    """One busy process per core while the block runs (stopped, by their pids, when it ends)."""
    procs = (
        [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
        if enabled
        else []
    )
    try:
        time.sleep(1.0 if procs else 0.0)  # let the scheduler spread them
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)


def recheck(loaded: LoadedModel, out: Path, fraction: float) -> dict[str, Any]:
    """This script's own verdict on a finished run: the published model.onnx and the baseline's
    export loaded afresh and timed by the same interleaved rule, on the machine as it is now."""
    runtime = get_runtime("ort-cpu", threads=1)
    inputs = [t.detach().numpy() for t in loaded.example_inputs]
    base, final = runtime.load(str(out / "work" / "baseline.onnx")), runtime.load(str(out / "model.onnx"))
    baseline_ms = runtime.measure(base, inputs, 5, 20).median
    repeats = int(min(2000, max(50, np.ceil(MIN_TIMED_S * 1e3 / max(baseline_ms, 1e-3)))))  # as compress chooses them
    d, _, _ = decision.decide(
        runtime, final, inputs, fraction, reference=base, chunk=max(decision.MIN_CHUNK, -(-repeats // decision.ROUNDS))
    )
    return d.to_dict()


def latency_row(
    name: str, budget: str, work: Path, log: Callable[[str], None], settings: Settings | None = None
) -> tuple[dict[str, Any], Path | None]:
    """One `compress` run summarised; the run folder for the re-check (None when it stopped)."""
    loaded = build(name)
    fraction = float(budget.rstrip("%")) / 100
    out = work / f"{name.replace(':', '_')}_{budget.rstrip('%')}_{(settings.search if settings else 'default')}"
    shutil.rmtree(out, ignore_errors=True)
    row: dict[str, Any] = {"model": name, "input_shape": list(loaded.input_shape), "budget": budget}
    t0 = time.perf_counter()
    try:
        res = compress(
            loaded, settings or Settings(budget=budget), out, progress=lambda line: log(f"[{name} {budget}] {line}")
        )
    except EdgepruneError as err:  # "machine too noisy to decide" among them: the CLI's exit 2
        row |= {
            "stopped": str(err),
            "too_noisy": isinstance(err, decision.TooNoisy),
            "met": False,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        log(f"[{name} {budget}] stopped: {err}")
        return row, None
    for candidate in (out / "work").glob("candidate_*"):  # the re-check needs the baseline's export and model.onnx only
        candidate.unlink()
    rep = res.report
    final = rep["budget"]["decision"]
    steps = rep["search"]["steps"]
    decisions = [s["decision"] for s in steps if s.get("decision")] + [final]
    row |= {
        "met": res.met,
        "earlier_finals": rep["budget"]["earlier_decisions"],
        "ratio": final["estimate"],
        "ratio_interval": [final["low"], final["high"]],
        "ratio_over_budget": final["estimate"] / fraction,
        "final_rounds": final["rounds"],
        "candidates": rep["search"]["candidates_measured"],
        "confirmations": sum("confirm" in s for s in steps),
        "drift_allowance": rep["search"].get("drift_allowance"),
        "search_s": rep["timings_s"].get("search"),
        "wall_s": round(time.perf_counter() - t0, 1),
        "stop_reason": rep["search"]["stop_reason"],
        "guide": rep["search"].get("guide"),
        "other_cpu_s": round(sum(d["other_cpu_s"] for d in decisions), 2),
        "busy_max": max(d["busy"] for d in decisions),
        "rounds_on_cpu_time": sum(d["cpu_rounds"] for d in decisions),
        "rounds": sum(d["rounds"] for d in decisions),
        "busy_candidates": rep["search"]["busy"]["candidates"],
        "final_busy": rep["search"]["busy"]["final"],
        "flops_ratio": rep["final"]["flops"] / rep["baseline"]["flops"],
        "baseline_ms": rep["baseline"]["latency_ms"]["median"],
        "final_ms": rep["final"]["latency_ms"]["median"],
        "steps": [
            {
                k: s.get(k)
                for k in (
                    "index",
                    "level",
                    "lambda",
                    "fill",
                    "confirm",
                    "predicted_flops",
                    "value",
                    "within_budget",
                    "seconds",
                )
            }
            | {
                "ratio": s["decision"]["estimate"],
                "interval": [s["decision"]["low"], s["decision"]["high"]],
                "verdict": s["decision"]["verdict"],
                "rounds": s["decision"]["rounds"],
                "cpu_rounds": s["decision"]["cpu_rounds"],
                "other_cpu_s": s["decision"]["other_cpu_s"],
            }
            for s in steps
        ],
        "accuracy": rep.get("accuracy"),
        "recovery_s": (rep.get("recovery") or {}).get("seconds"),
        "sensitivity_s": rep["timings_s"].get("sensitivity"),
        "latency_table_s": rep["timings_s"].get("latency_table"),
        "cost": rep["search"].get("cost"),
        "timings_s": rep["timings_s"],
    }
    log(
        f"[{name} {budget}] ratio {final['estimate']:.3f} = {row['ratio_over_budget']:.3f} of the budget, "
        f"{'MET' if res.met else 'MISSED'}, {row['candidates']} candidates, search {row['search_s']:.0f}s, "
        f"other processes {row['other_cpu_s']:.1f} CPU-s"
    )
    return row, out


def checked(row: dict[str, Any], out: Path | None, log: Callable[[str], None]) -> None:
    """Add this script's re-timed verdict to a finished row (`wrong_met`: MET, re-timed over). A
    re-check that contradicts the tool's verdict is timed twice more and the majority of the three
    stands: one re-check is one reading, and a transient can make it wrong (the plan of a ResNet-56
    50 % row at 8cbe0af re-checked at 0.530 of the baseline, then read 0.474-0.487 in twenty
    re-timings the next day, hog paused or not)."""
    if out is None:
        return
    fraction = float(row["budget"].rstrip("%")) / 100
    loaded = build(row["model"])
    checks = [recheck(loaded, out, fraction)]
    if (checks[0]["verdict"] == decision.UNDER) != row["met"]:
        checks += [recheck(loaded, out, fraction) for _ in range(2)]
    over = sum(c["verdict"] == decision.OVER for c in checks)
    row["recheck"], row["earlier_rechecks"] = checks[-1], checks[:-1]
    row["wrong_met"] = bool(row["met"] and 2 * over > len(checks))
    for check in checks:
        log(
            f"[{row['model']} {row['budget']}] re-timed: {check['estimate']:.3f} in [{check['low']:.3f}, "
            f"{check['high']:.3f}] ({check['verdict']})"
        )
    if row["wrong_met"]:
        log(f"[{row['model']} {row['budget']}] WRONG MET: {over} of {len(checks)} re-checks over the budget")


def summary(rows: list[dict[str, Any]], window: float) -> dict[str, Any]:
    done = [r for r in rows if "stopped" not in r]
    return {
        "rows": len(rows),
        "met": sum(r["met"] for r in done),
        "too_noisy": sum(bool(r.get("too_noisy")) for r in rows),
        "other_stops": [
            f"{r['model']} {r['budget']}: {r['stopped']}" for r in rows if "stopped" in r and not r.get("too_noisy")
        ],
        "within_window": sum(r["met"] and r["ratio_over_budget"] >= window for r in done),
        "window": window,
        "ratio_over_budget": [
            min((r["ratio_over_budget"] for r in done), default=None),
            max((r["ratio_over_budget"] for r in done), default=None),
        ],
        "max_candidates": max((r["candidates"] for r in done), default=0),
        "wrong_met": [f"{r['model']} {r['budget']}" for r in done if r.get("wrong_met")],
        "missed": [f"{r['model']} {r['budget']}" for r in done if not r["met"]],
    }


def accuracy_rows(
    names: list[str],
    data: str,
    epochs: int,
    work: Path,
    result: dict[str, Any],
    save: Callable[[], None],
    log: Callable[[str], None],
) -> None:
    """Each search on the trained CIFAR ResNets `names` at 50 %, the same fine-tune, full-test-set
    top-1; one model's rows are all from this run (another model's earlier rows are kept)."""
    from edgeprune.pipeline.data import load_data
    from edgeprune.pipeline.recovery import top1

    val = load_data(data, batch_size=256).val
    for name in names:
        entry = result["accuracy"][name] = {
            "baseline_top1": top1(trained(name), val),
            "rows": [],
            "measured_at_commit": result["git"]["commit"],
        }
        # an empty latency-table cache per model: the first search using the table (guided) pays
        # for timing it, as on a user's first run; layerwise, after it, finds its entries cached
        os.environ["EDGEPRUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"cache_{name}_", dir=work)
        for search in SEARCHES:
            # the searches compared
            settings = Settings(
                budget="50%", search=search, data=data, recover="finetune", epochs=epochs, precision="fp32"
            )
            row, out = latency_row(name, "50%", work, log, settings)
            checked(row, out, log)
            row |= {"search": search, "top1": (row.get("accuracy") or {}).get("recovered")}
            entry["rows"].append(row)
            log(f"[{name} 50% {search}] top-1 {row['top1']}, ratio {row.get('ratio')}")
            save()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--budgets", nargs="+", default=list(DEFAULT_BUDGETS))
    p.add_argument(
        "--passes",
        nargs="*",
        default=["quiet", "loaded"],
        choices=["quiet", "loaded"],
        help="latency passes to run (none with --accuracy alone)",
    )
    p.add_argument("--accuracy", action="store_true", help="the accuracy rows (needs --data)")
    p.add_argument("--data", help="the full CIFAR-10 .npz, for --accuracy")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of every accuracy row")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON (written atomically after every row)")
    a = p.parse_args(argv)
    if a.accuracy and not a.data:
        p.error("--accuracy needs --data PATH/cifar10.npz")
    log = lambda line: print(line, flush=True)  # noqa: E731
    defaults = Settings(budget="50%")
    result: dict[str, Any] = {
        **header("budget_hit"),
        "python": sys.executable,
        "zoo": _zoo_versions(),
        "protocol": {
            "runtime": "ort-cpu",
            "graph_optimization": "ALL",
            "threads": defaults.threads,
            "warmup": defaults.warmup,
            "repeats": f"max({defaults.repeats}, ceil({MIN_TIMED_S}s / baseline median)), at most 2000, in "
            f"{decision.ROUNDS} rounds",
            "search": {
                "strategy": defaults.search,
                "tol": defaults.tol,
                "max_candidates": defaults.max_candidates,
                "round_to": defaults.round_to,
                "method": defaults.method,
            },
            "decision": {
                "rounds_per_batch": decision.ROUNDS,
                "max_rounds": decision.MAX_ROUNDS,
                "confidence": decision.CONFIDENCE,
                "statistic": "median of per-round median ratios (CPU time in rounds that waited for a CPU)",
            },
            "loaded": (
                f"{os.cpu_count()} processes running `while True: pass`, one per core, started 1 s before the pass"
            ),
            "recheck": (
                "the published model.onnx and the baseline export re-timed by this script right after each row, the "
                "hog paused (SIGSTOP); one that contradicts the tool is timed "
                "twice more and the majority of the three stands"
            ),
            "accuracy": "finetune (the recovery's defaults), --epochs, full CIFAR-10 test set; budget 50%",
        },
        "budgets": a.budgets,
        "passes": {},
        "accuracy": {},
    }
    earlier = earlier_result(a.out, result)
    if earlier is not None:  # keep what this run does not redo (each part records its commit)
        for key in ("passes", "accuracy"):
            kept = {
                k: v | {"measured_at_commit": v.get("measured_at_commit", earlier[1])}
                for k, v in earlier[0].get(key, {}).items()
            }
            result[key] = kept
    save = lambda: atomic.write_json(a.out, result)  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="budget_hit_"))
    try:
        for name in a.passes:
            rows: list[dict[str, Any]] = []
            result["passes"][name] = {"rows": rows, "summary": {}}
            with cpu_hog(name == "loaded") as hog:
                for model in a.models:
                    for budget in a.budgets:
                        try:
                            row, out = latency_row(model, budget, work, log)
                        except ImportError as err:  # a zoo model outside the zoo environment
                            row, out = (
                                {"model": model, "budget": budget, "stopped": f"skipped: {err}", "met": False},
                                None,
                            )
                        with paused(hog):  # re-timed at once, with the hog stopped: a pass cut short is checked too
                            checked(row, out, log)
                        rows.append(row)
                        result["passes"][name]["summary"] = summary(rows, WINDOW if name == "quiet" else 0.90)
                        save()
            log(f"{name}: {result['passes'][name]['summary']}")
        if a.accuracy:
            accuracy_rows([m for m in ACCURACY_MODELS if m in a.models], a.data, a.epochs, work, result, save, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save()
    return 0


def _zoo_versions() -> dict[str, str]:
    import importlib.metadata

    out = {}
    for pkg in ("timm", "torchvision"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    return out


if __name__ == "__main__":
    sys.exit(main())
