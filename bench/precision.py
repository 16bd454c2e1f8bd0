"""precision: int8 searched together with pruning against one measured budget (ORT CPU, 1 thread).

Part 1, the trained CIFAR-10 ResNet-20 and ResNet-56 (edgeprune/assets), budgets of 50% and 25% of
the float32 baseline's measured latency, three ways, each a full `compress` run:

- fp32:  `--precision fp32`, pruning only;
- int8:  `--precision int8`, int8 of the unpruned model where it fits, else widths searched with
         int8 candidates (an error row where no int8 plan fits);
- auto:  `--precision auto` (pipeline/precision.py).

Every row that prunes gets the same recovery: `--recover finetune --epochs 3` on the full training
split (float32; int8 is quantized after it, calibrated on 256 training images); a row that prunes
nothing (int8 alone fits) is not trained. Per row: the precision chosen and why, the FLOPs kept, the
latency ratio (the published model.onnx re-timed interleaved with the float32 baseline's export, all
rows of a model and the baseline in one batch, so they compare), top-1 on the runtime itself (the
published model.onnx on ort-cpu over the full 10,000-image test set) beside PyTorch's, and seconds.

Part 2, latency only (`--latency`): ResNet-18 and MobileNetV2 at 224x224 (registry, random init)
and zoo models (`--zoo`, from bench/zoo_models.py; run this part with the zoo environment's python,
`../shared/zoo/make-zoo-venv.sh .venv-zoo` plus `pip install -e '.[cpu-runtimes]'` in it): float32
and int8 of the unpruned model on ort-cpu and openvino-cpu, interleaved per runtime, each int8 model
verified against PyTorch float32 (CIFAR-10 upsampled to 224 as calibration and check images,
bench/data224.py). Random weights time like trained ones; their int8 error is not an accuracy claim.

    .venv/bin/python bench/precision.py --data ../shared/data/cifar10/cifar10.npz \
        [--models resnet20] [--modes fp32 auto] [--runs 2]
    .venv-zoo/bin/python bench/precision.py --models --latency resnet18 mobilenetv2 \
        --zoo tv:efficientnet_b0 timm:regnetx_004_tv
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

from bench.common import CIFAR10_PROTOCOL, carry_over, earlier_result, header, trained  # noqa: E402
from edgeprune import atomic, models  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.pipeline.compress import Settings, compress  # noqa: E402
from edgeprune.pipeline.counting import count  # noqa: E402
from edgeprune.pipeline.data import load_data  # noqa: E402
from edgeprune.pipeline.loading import from_module  # noqa: E402
from edgeprune.pipeline.measure import RuntimeModel, TargetMeasurer  # noqa: E402
from edgeprune.pipeline.precision import CALIBRATION_IMAGES, QuantizedMeasurer, check_images  # noqa: E402
from edgeprune.pipeline.recovery import top1  # noqa: E402
from edgeprune.quantize import quantizer_for  # noqa: E402
from edgeprune.runtime_bench import get_runtime  # noqa: E402
from edgeprune.runtime_bench.base import interleave  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "precision.json"
MODES = ("fp32", "int8", "auto")
LATENCY_RUNTIMES = ("ort-cpu", "openvino-cpu")
#: timed runs per model in the interleaved re-timing (10 rounds)
REPEATS = 1000


def cifar_model(
    arch: str, data: Any, budgets: list[str], modes: list[str], epochs: int, runs: int, work: Path, log: Any
) -> dict[str, Any]:
    """Part 1 for one trained checkpoint: every (budget, mode) row, `runs` times (the modes
    alternating, so a slow spell of the machine falls on both), then all rows re-timed together."""
    base = trained(arch)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rt = get_runtime("ort-cpu", threads=1)
    entry: dict[str, Any] = {"baseline": {"top1": top1(base, data.val), **vars(count(base, (x,)))}, "rows": []}
    outs: list[Path] = []
    for budget, run, mode in ((b, r, m) for b in budgets for r in range(runs) for m in modes):
        label, out = f"{arch} {budget} {mode} run {run + 1}", work / f"{arch}_{budget.rstrip('%')}_{mode}_{run}"
        settings = Settings(
            budget=budget,
            runtime="ort-cpu",
            threads=1,
            data=str(data.source),
            recover="finetune",
            epochs=epochs,
            precision=mode,
        )
        t0 = time.perf_counter()
        try:
            res = compress(
                from_module(copy.deepcopy(base), x, arch=arch, num_classes=10),
                settings,
                out,
                lambda line: log(f"{label} {line}"),  # noqa: B023 - only while compress runs
            )
        except EdgepruneError as err:
            log(f"{label}: {err}")
            entry["rows"].append(
                {
                    "budget": budget,
                    "mode": mode,
                    "run": run,
                    "error": str(err),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            continue
        seconds = round(time.perf_counter() - t0, 1)
        rep = res.report
        runtime_top1 = top1(RuntimeModel(rt, rt.load(str(out / "model.onnx")), 1), data.val)
        acc = rep["accuracy"] or {}
        row = {
            "budget": budget,
            "mode": mode,
            "run": run,
            "precision": rep["precision"]["chosen"],
            "why": rep["precision"]["why"],
            "flops_ratio": rep["final"]["flops"] / rep["baseline"]["flops"],
            "params": rep["final"]["params"],
            "widths": {r["group"]: r["kept"] for r in rep["groups"]},
            "runtime_top1": runtime_top1,
            "pytorch_top1": acc.get("recovered", acc.get("pruned")),
            "top1_before_recovery": acc.get("pruned"),
            "ratio_in_run": 1 / rep["speedup"],
            "met_in_run": rep["budget"]["met"],
            "seconds": seconds,
            "recovery_seconds": (rep["recovery"] or {}).get("seconds", 0.0),
            "int8_check": rep["precision"]["int8_check"],
            "searched": rep["precision"]["searched"],
            "int8_unpruned": rep["precision"]["int8_unpruned"],
            "candidates_measured": rep["search"]["candidates_measured"],
        }
        log(
            f"{label}: {row['precision']}, FLOPs {row['flops_ratio']:.3f}, "
            f"runtime top-1 {runtime_top1:.4f}, {seconds:.0f}s"
        )
        entry["rows"].append(row)
        outs.append(out)
    # every published model and the float32 baseline's export, timed interleaved in one batch
    measurer = TargetMeasurer(rt, (x,), work, repeats=REPEATS)
    sessions = [measurer.prepare(base, f"{arch}_retime_base").session] + [rt.load(str(o / "model.onnx")) for o in outs]
    stats = interleave(rt, sessions, [measurer.inputs_np] * len(sessions), 10, REPEATS)
    entry["baseline"]["latency_ms"] = stats[0].to_dict()
    for row, s in zip([r for r in entry["rows"] if "error" not in r], stats[1:]):
        fraction = float(row["budget"].rstrip("%")) / 100
        row |= {
            "latency_ratio": s.median / stats[0].median,
            "latency_ms": s.to_dict(),
            "met": s.median / stats[0].median <= fraction,
        }
    return entry


def latency_model(
    name: str, model: torch.nn.Module, x: torch.Tensor, data: Any, work: Path, log: Any
) -> dict[str, Any]:
    """Part 2 for one model: float32 and int8 of the unpruned model, interleaved, on each runtime."""
    entry: dict[str, Any] = {"input_shape": list(x.shape), **vars(count(model, (x,))), "runtimes": {}}
    calibration, check = data.calibration(CALIBRATION_IMAGES), check_images(data.val)
    for runtime in LATENCY_RUNTIMES:
        rt = get_runtime(runtime, threads=1)
        ok, why = rt.available()
        if not ok:
            entry["runtimes"][runtime] = {"skipped": why}
            continue
        fp32 = TargetMeasurer(rt, (x,), work / runtime, repeats=50)
        tag = name.replace(":", "_")
        try:
            int8 = QuantizedMeasurer(fp32, quantizer_for(runtime), calibration, check)
            pair = [fp32.prepare(model, tag), int8.prepare(model, tag)]
        except EdgepruneError as err:
            entry["runtimes"][runtime] = {"error": str(err)}
            log(f"{name} on {runtime}: {err}")
            continue
        b, q = interleave(rt, [m.session for m in pair], [fp32.inputs_np] * 2, 10, fp32.repeats)
        entry["runtimes"][runtime] = {
            "fp32_ms": b.to_dict(),
            "int8_ms": q.to_dict(),
            "int8_over_fp32": q.median / b.median,
            "int8_check": pair[1].artifact.meta["int8_check"],
            "quantization": pair[1].artifact.meta["quantization"],
            "settings": rt.settings(),
        }
        log(
            f"{name} on {runtime}: fp32 {b.median:.2f} ms, int8 {q.median:.2f} ms ({q.median / b.median:.2f}), "
            f"int8 rel L2 {pair[1].artifact.meta['int8_check']['rel_l2']:.3f}"
        )
    return entry


def _zoo(spec: str) -> tuple[torch.nn.Module, torch.Tensor]:
    from bench.zoo_models import build

    model, inputs = build(spec)
    return model, inputs[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="the full CIFAR-10 .npz (part 1)")
    p.add_argument(
        "--models",
        nargs="*",
        default=["resnet20", "resnet56"],
        help="trained CIFAR-10 checkpoints (part 1); none to skip it",
    )
    p.add_argument("--budgets", nargs="+", default=["50%", "25%"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of every row that prunes")
    p.add_argument(
        "--runs",
        type=int,
        default=1,
        help="runs of each (budget, mode) row: two searches of the same budget land on "
        "different plans as the machine's timings move, so one run each compares two samples",
    )
    p.add_argument(
        "--latency", nargs="*", default=[], help="registry models timed at 224x224 (part 2), e.g. resnet18 mobilenetv2"
    )
    p.add_argument(
        "--zoo",
        nargs="*",
        default=[],
        help="zoo specs timed (part 2), e.g. tv:efficientnet_b0; needs the zoo environment",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    torch.set_num_threads(1)  # the fine-tune and PyTorch's evaluation: one core, as the runtime is timed on one
    result: dict[str, Any] = {
        **header("precision"),
        "budgets": a.budgets,
        "epochs": a.epochs,
        "modes": a.modes,
        "runs": a.runs,
        "protocol": CIFAR10_PROTOCOL
        | {
            "recovery": f"finetune {a.epochs} epochs (float32) where the plan prunes",
            "runtime_top1": "published model.onnx on ort-cpu, full test set",
            "retiming": f"all rows of a model and its baseline interleaved, {REPEATS} runs each",
        },
        "models": {},
        "latency_only": {},
    }
    carry_over(a.out, result, a.models, ("budgets", "epochs", "modes"))
    earlier = earlier_result(a.out, result)
    if earlier is not None:  # latency rows of models not re-timed this time, with the commit they were measured at
        for name, row in earlier[0].get("latency_only", {}).items():
            if name not in a.latency + a.zoo:
                result["latency_only"][name] = row | {"measured_at_commit": row.get("measured_at_commit", earlier[1])}
    work = Path(tempfile.mkdtemp(prefix="bench_precision_"))
    if a.models:
        if not a.data:
            p.error("part 1 needs --data (the full CIFAR-10 .npz)")
        data = load_data(a.data, batch_size=128)
        for arch in a.models:
            result["models"][arch] = cifar_model(arch, data, a.budgets, a.modes, a.epochs, a.runs, work, log)
            atomic.write_json(a.out, result)
    if a.latency or a.zoo:
        data224 = load_data("bench.data224:cifar10_224")
        for name in a.latency:
            torch.manual_seed(0)
            model = models.create(name, num_classes=10).eval()
            x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            result["latency_only"][name] = latency_model(name, model, x, data224, work, log)
            atomic.write_json(a.out, result)
        for spec in a.zoo:
            model, x = _zoo(spec)
            result["latency_only"][spec] = latency_model(spec, model, x, data224, work, log)
            atomic.write_json(a.out, result)
    atomic.write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
