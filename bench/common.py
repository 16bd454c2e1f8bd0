"""What the benchmarks share: what every result file carries (the code it ran, the machine, the
versions), the one way to run `compress` as a user does and read its report, resumable steps, and
the rows of the in-process CIFAR benchmarks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from edgeprune import __version__, environment, models  # noqa: E402
from edgeprune.assets import asset  # noqa: E402
from edgeprune.pipeline.measure import TargetMeasurer  # noqa: E402


def git_info() -> dict[str, Any]:
    """The code these numbers were measured with: HEAD and any uncommitted package files."""

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty_package_files": git("status", "--porcelain", "edgeprune").splitlines(),
    }


def header(name: str) -> dict[str, Any]:
    return {"benchmark": name, "edgeprune": __version__, "environment": environment.describe(), "git": git_info()}


def earlier_result(out: Path, result: dict[str, Any], same: tuple[str, ...] = ()) -> tuple[dict[str, Any], str] | None:
    """The result file already at `out` and the commit it was measured at, when it reads and was
    measured with the same settings as `result` (its `same` keys); None otherwise. What lets a
    benchmark re-run part of its rows without throwing away the rest."""

    try:
        earlier = json.loads(out.read_text())
    except (OSError, ValueError):
        return None
    if any(earlier.get(k) != result.get(k) for k in same):
        return None
    return earlier, earlier.get("git", {}).get("commit", "")


def carry_over(out: Path, result: dict[str, Any], running: list[str], same: tuple[str, ...]) -> None:
    """Keep the entries of models this run does not re-measure from the earlier result file at `out`,
    so benchmarking one more model does not throw away the others' rows; only when the earlier run
    used the same settings (`same` keys). Each kept entry records the commit it was measured at."""
    found = earlier_result(out, result, same)
    if found is None:
        return
    earlier, commit = found
    for arch, entry in earlier.get("models", {}).items():
        if arch not in running:
            entry.setdefault("measured_at_commit", commit)
            result["models"][arch] = entry


def trained(arch: str) -> torch.nn.Module:
    """A CIFAR-10 checkpoint trained by `compress train` and shipped in edgeprune/assets."""
    model = models.create(arch, num_classes=10)
    model.load_state_dict(torch.load(asset(f"{arch}_cifar10.pt"), map_location="cpu", weights_only=True))
    return model.eval()


def latency_ratio(measurer: TargetMeasurer, base: torch.nn.Module, model: torch.nn.Module, tag: str) -> dict[str, Any]:
    """model / baseline median latency, timed interleaved in one run (BENCHMARKING.md)."""
    pair = [measurer.prepare(base, f"{tag}_base"), measurer.prepare(model, tag)]
    b, m = measurer.interleaved(pair)
    return {"ratio": m.median / b.median, "baseline_ms": b.to_dict(), "model_ms": m.to_dict()}


def run_row(
    label: str,
    loaded: Any,
    settings: Any,
    base: torch.nn.Module,
    measurer: TargetMeasurer,
    x: torch.Tensor,
    work: Path,
    log: Any,
    out: Path | None = None,
    metric: str = "top1",
    evaluate: Any = None,
) -> dict[str, Any]:
    """One full `compress` run, re-timed against the unpruned `base` interleaved, as a result row
    (an `error` row when the pipeline refuses with a user error). `out` (default: a folder of its
    own under `work`) may be shared by runs that should reuse each other's budget-free stages;
    `metric` names the accuracy keys (the run's --metric: top-1 by default, bits per character for
    a language model); `evaluate(result) -> dict` adds a benchmark's own figures of the finished
    run (a robust accuracy of its model) to the row."""
    import time

    from edgeprune.errors import EdgepruneError
    from edgeprune.pipeline.compress import compress
    from edgeprune.pipeline.counting import count

    tag = label.replace(" ", "_").replace("+", "")
    t0 = time.perf_counter()
    try:
        res = compress(loaded, settings, out or work / tag, log)
    except EdgepruneError as err:
        log(f"{label}: {err}")
        return {"label": label, "error": str(err)}
    lat = latency_ratio(measurer, base, res.model, tag)
    c = count(res.model, (x,))
    timings = res.report["timings_s"]
    recovery, accuracy = res.report["recovery"] or {}, res.accuracy or {}  # None under --recover none / without data
    row = {
        "label": label,
        "method": settings.method,
        "depth": settings.depth,
        "recovery": recovery.get("method", "none"),
        f"{metric}_pruned": accuracy.get("pruned"),
        metric: accuracy.get("recovered"),
        "latency_ratio": lat["ratio"],
        "latency": lat,
        "met_in_run": res.met,
        "flops": c.flops,
        "params": c.params,
        "removed_blocks": list(res.plan.removed_blocks),
        "widths": {gid: len(g.keep) for gid, g in res.plan.groups.items()},
        "candidates_measured": res.report["search"]["candidates_measured"],
        "stop_reason": res.report["search"]["stop_reason"],
        "predictor": res.report["search"].get("predictor"),
        "method_seconds": timings.get("prepare", 0.0) + timings.get("scores", 0.0),
        "search_and_prune_seconds": round(sum(v for k, v in timings.items() if k != "recover"), 1),
        "recovery_seconds": recovery.get("seconds", 0.0),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    if evaluate is not None:
        row.update(evaluate(res))
    quality = f"{metric} {row[metric]:.4f}, " if row[metric] is not None else ""
    log(f"{label}: {quality}latency ratio {lat['ratio']:.3f}, {row['wall_seconds']:.0f}s")
    return row


#: how the CIFAR-10 benchmarks measure, recorded in each result file (each adds its training protocol)
CIFAR10_PROTOCOL = {
    "runtime": "ort-cpu",
    "threads": 1,
    "graph_optimization": "ALL",
    "latency": "median ratio to the baseline, timed interleaved",
    "accuracy": "top-1, full CIFAR-10 test set",
}


def model_entry(
    arch: str, data: Any, x: torch.Tensor, work: Path, result: dict[str, Any], log: Any
) -> tuple[torch.nn.Module, TargetMeasurer, dict[str, Any]] | None:
    """The trained checkpoint of `arch`, a 1-thread ort-cpu measurer and its result entry (baseline
    top-1, FLOPs, params) registered in `result["models"]`; None, recorded under `result["skipped"]`,
    when no checkpoint is committed for it yet."""
    from edgeprune.errors import EdgepruneError
    from edgeprune.pipeline.counting import count
    from edgeprune.pipeline.recovery import top1
    from edgeprune.runtime_bench import get_runtime

    try:
        base = trained(arch)
    except (EdgepruneError, OSError) as err:
        result["skipped"][arch] = f"no trained checkpoint: {err}"
        log(f"{arch}: skipped ({err})")
        return None
    measurer = TargetMeasurer(get_runtime("ort-cpu", threads=1), (x,), work, repeats=400)
    entry = {"baseline": {"top1": top1(base, data.val), **vars(count(base, (x,)))}, "rows": []}
    result["models"][arch] = entry
    return base, measurer, entry


@dataclasses.dataclass
class CompressRun:
    """One `compress` run: its exit code (None: finished before, its report reused), the wall
    seconds of all its tries and the code they ran (OUT/wall_seconds.json, kept for a re-run that
    reuses it), and its report (None when it stopped before writing one)."""

    rc: int | None
    seconds: float
    measured_at: dict[str, Any] | None
    report: dict[str, Any] | None


def compress_run(
    args: list[str],
    out: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    noisy_retries: int = 0,
    on_line: Callable[[str, int], None] | None = None,
) -> CompressRun:
    """`compress ARGS --out OUT` in a subprocess of this interpreter (cwd: this checkout), as a user
    runs it, its output appended to `log_path` and each line given to `on_line(line, pid)` (to echo
    it, or renice the process by stage); a finished run (OUT/report.json) is not repeated: compress
    resumes an unfinished one from OUT/work itself. A run that stops "too noisy to decide" (exit 2)
    is resumed up to `noisy_retries` times: the same command goes on from the stage it stopped at."""
    report = out / "report.json"
    timing = out / "wall_seconds.json"
    if report.exists():
        done = json.loads(timing.read_text()) if timing.exists() else {}
        return CompressRun(None, done.get("seconds", float("nan")), done.get("git"), json.loads(report.read_text()))
    t0 = time.perf_counter()
    rc = 0
    for _ in range(noisy_retries + 1):
        with open(log_path, "a") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edgeprune.cli", *args, "--out", str(out)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=REPO,
                env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if on_line is not None:
                    on_line(line, proc.pid)
            rc = proc.wait()
        if rc != 2 or "too noisy" not in log_path.read_text()[-2000:]:
            break
    seconds, git = round(time.perf_counter() - t0, 1), git_info()
    if out.is_dir():
        timing.write_text(json.dumps({"seconds": seconds, "git": git}) + "\n")
    return CompressRun(rc, seconds, git, json.loads(report.read_text()) if report.exists() else None)


def run_compress(
    args: list[str],
    out: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    accept: tuple[int, ...] = (0,),
    noisy_retries: int = 0,
    on_line: Callable[[str, int], None] | None = None,
) -> CompressRun:
    """`compress_run`, its report there: a run that exits with a code not in `accept` raises, naming
    its log (1, a missed budget, still writes its report)."""
    run = compress_run(args, out, log_path, env, noisy_retries, on_line)
    if (run.rc is not None and run.rc not in accept) or run.report is None:
        raise SystemExit(f"compress exited {run.rc}; see {log_path}")
    return run


class Steps:
    """A benchmark's resumable steps: each step's result as JSON in `work/steps/` with the settings
    it ran under; a re-run with the same settings reuses it, other settings redo it."""

    def __init__(self, work: Path, log: Any = print) -> None:
        self.dir = work / "steps"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log

    def run(self, name: str, config: dict[str, Any], fn: Any) -> dict[str, Any]:
        """`fn()`'s result (a JSON-able dict, given its wall seconds as `step_seconds`), or the one
        stored for `name` under the same `config`."""
        from edgeprune import atomic

        path = self.dir / f"{name}.json"
        try:
            done = json.loads(path.read_text())
            if done.get("config") == config:
                self.log(f"{name}: cached ({path})")
                return dict(done["result"])
        except (OSError, ValueError):
            pass
        self.log(f"{name}: running")
        t0 = time.perf_counter()
        result = fn()
        result.setdefault("step_seconds", round(time.perf_counter() - t0, 1))
        atomic.write_json(path, {"config": config, "result": result})
        return dict(result)
