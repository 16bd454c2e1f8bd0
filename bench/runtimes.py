"""runtimes: does pruning for one runtime carry over to the others?

For each model (random-init weights: latency does not depend on training), prune to 50% of its
measured latency on ort-cpu (1 thread, the whole pipeline, L1), then time the baseline and the
pruned model *interleaved* (A B A B ..., BENCHMARKING.md) on every runtime available here, 1 thread:
median, p90, the pruned/baseline ratio per runtime, and each runtime's max output difference from
PyTorch (every runtime is verified before its latency counts). Runtimes that cannot run here are
listed with their reason.

    .venv/bin/python bench/runtimes.py [--models resnet20 mobilenetv2 resnet18] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import header  # noqa: E402
from edgeprune import atomic, models  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.pipeline.compress import Settings, compress  # noqa: E402
from edgeprune.pipeline.counting import count  # noqa: E402
from edgeprune.pipeline.loading import from_module  # noqa: E402
from edgeprune.pipeline.measure import TargetMeasurer  # noqa: E402
from edgeprune.runtime_bench import get_runtime, runtime_names  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "runtimes.json"
RUNTIMES = (
    "ort-cpu",
    "ort-mobile:arm",
    "ort-mobile:amd64",
    "openvino-cpu:f32",
    "openvino-cpu:bf16",
    "torch-cpu",
    "executorch-xnnpack",
    "torch-cuda",
    "ort-cuda",
    "tensorrt:fp32",
    "tensorrt:fp16",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2", "resnet18"])
    p.add_argument("--budget", default="50%")
    p.add_argument(
        "--repeats", type=int, default=400, help="timed runs per model and runtime (interleaved in 10 rounds)"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    result: dict[str, Any] = {
        **header("runtimes"),
        "budget": a.budget,
        "pruned_for": "ort-cpu",
        "threads": 1,
        "registered_runtimes": runtime_names(),
        "unavailable": {},
        "models": {},
    }
    work = Path(tempfile.mkdtemp(prefix="bench_runtimes_"))
    for arch in a.models:
        torch.manual_seed(0)
        model = models.create(arch, num_classes=10).eval()
        shape = models.default_input_shape(arch)
        loaded = from_module(model, input_shape=shape, arch=arch, num_classes=10)
        res = compress(loaded, Settings(budget=a.budget), work / arch, lambda line: log(f"{arch} {line}"))  # noqa: B023 - only while compress runs
        base_c, pruned_c = count(model, loaded.example_inputs), count(res.model, loaded.example_inputs)
        entry: dict[str, Any] = {
            "input_shape": list(shape),
            "flops_ratio": pruned_c.flops / base_c.flops,
            "ort_cpu_ratio_in_run": 1 / res.speedup,
            "runtimes": {},
        }
        for name in RUNTIMES:
            rt = get_runtime(name, threads=1)
            ok, why = rt.available()
            if not ok:
                result["unavailable"][name] = why
                continue
            measurer = TargetMeasurer(
                rt, loaded.example_inputs, work / f"{arch}_{name.replace(':', '_')}", warmup=10, repeats=a.repeats
            )
            try:
                pair = [measurer.prepare(model, "base"), measurer.prepare(res.model, "pruned")]
            except EdgepruneError as err:  # a runtime that computes something else: recorded, not timed
                entry["runtimes"][name] = {"error": str(err)}
                log(f"{arch} {name}: {err}")
                continue
            b, m = measurer.interleaved(pair)
            entry["runtimes"][name] = {
                "baseline_ms": b.to_dict(),
                "pruned_ms": m.to_dict(),
                "ratio": m.median / b.median,
                "max_abs_diff": max(pair[0].max_abs_diff, pair[1].max_abs_diff),
                "settings": rt.settings(),
            }
            log(f"{arch} {name}: baseline {b.median:.3f} ms, pruned {m.median:.3f} ms, ratio {m.median / b.median:.3f}")
        result["models"][arch] = entry
        atomic.write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
