"""Label-free recovery of a pruned detector: a YOLOv8n trained here by ultralytics' own trainer,
compressed to 50 % of its measured latency through edgeprune's ultralytics door, recovered by
distillation from the unpruned model on unlabelled images, scored by ultralytics' own validator.

What it measures (issue 32), all on one detection set built here from CIFAR-10 and nothing downloaded:
mAP50-95 (and mAP50) by `YOLO(ckpt).val()` of
  teacher      the YOLOv8n (`yolov8n.yaml`, nc=10, random init) trained by ultralytics' trainer;
               its best.pt is the checkpoint a user holds (half precision, frozen)
  pruned       the plan edgeprune chose for `compress best.pt --budget 50%`, applied to the teacher,
               before any recovery (rebuilt from plan.json, written with the door's `save`)
  label_free   `<out>/model_ultralytics.pt` of that same run: recovered by edgeprune's default recovery
               without labels (distillation from the unpruned model, outputs + intermediate features)
               on the training images with their labels withheld (`--batch-size 16`)
  label_free_regression_term      the same recovery with the plain per-channel squared error on the
                                  outputs (the term before `dense_output`): the ablation
  ultralytics_finetune            the pruned, unrecovered checkpoint fine-tuned WITH labels by ultralytics'
                                  own trainer (`YOLO(ckpt).train(..., trainer=PrunedTrainer)`)
  label_free_then_ultralytics     the label-free checkpoint, then that same labelled fine-tune
with the wall seconds of each recovery, the measured latency ratio, FLOPs and parameter ratios, and
the target check: label-free recovery within 2 points of the teacher's mAP50-95.

The dataset: `--canvas`-pixel canvases (smooth colour field + texture + pixel noise) with 1-3 CIFAR-10
images each, pasted at random positions and sizes (32-80 px, overlap limited), box = the pasted
square, class = its CIFAR class; train objects from CIFAR's training split, val objects from its
test split, all seeded. edgeprune's `--data` gets a flat folder of the training images alone.

First, the default command a user runs (issue 37): `compress best.pt --budget 50% --data unlabelled/
--epochs N --batch-size 16 --metric ultralytics:data.yaml`, every other flag its default
(`--precision auto`): the precision it chose and why, and mAP50-95 inside the run (ultralytics'
validator on the val split: baseline, pruned and recovered in PyTorch float32, the published
model.onnx on the runtime), with the check that the published model is within 1 point of the float32
recovered one or float32 was published (`--only-default` stops there). The rows after it run
`compress` with `--precision fp32` (pruning only, no int8), so their comparison is about pruning and
recovery, on ONNX Runtime CPU, 1 thread (the default runtime); training runs on the CPU.

Every step is cached in `--work` (default /tmp/yolo_bench), so a re-run resumes after the last
finished step (delete a step's `steps/<name>.json` to redo it):

    YOLO_OFFLINE=1 nice -n 10 .venv-zoo/bin/python bench/yolo_distill.py [--work /tmp/yolo_bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing downloaded: ultralytics' online checks short-circuit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from bench.common import Steps, header  # noqa: E402
from edgeprune import atomic  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "yolo_distill.json"
DEFAULT_CIFAR = REPO.parent / "shared" / "data" / "cifar10" / "cifar10.npz"
#: ultralytics' trainer and validator here: CPU, no plots (no fonts to download), no AMP check, no worker processes
COMMON = {"device": "cpu", "workers": 0, "plots": False}
TRAIN = {**COMMON, "amp": False, "seed": 0, "deterministic": True, "exist_ok": True, "verbose": False}
TARGET_POINTS = 2.0  # label-free within this many mAP50-95 points of the teacher
PUBLISHED_POINTS = 1.0  # the default command's published model.onnx within this many of its float32 recovered model


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


# ---- 1. the dataset -------------------------------------------------------------------------------------------------


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour field, a mid-frequency texture and pixel noise, uint8 HWC."""
    from PIL import Image

    g = int(rng.integers(3, 9))
    low = Image.fromarray(rng.uniform(0, 255, (g, g, 3)).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    m = int(rng.integers(12, 41))
    mid = Image.fromarray((rng.normal(0, 1, (m, m, 3)) * 40 + 128).clip(0, 255).astype(np.uint8)).resize(
        (size, size), Image.BILINEAR
    )
    img = (
        np.asarray(low, np.float32) * rng.uniform(0.5, 0.9)
        + 30
        + (np.asarray(mid, np.float32) - 128) * rng.uniform(0.2, 1.0)
        + rng.normal(0, rng.uniform(3, 15), (size, size, 3))
    )
    return img.clip(0, 255).astype(np.uint8)


def _overlap_ok(box: tuple[int, int, int], boxes: list[tuple[int, int, int]]) -> bool:
    """A new square (x, y, side) covers at most a fifth of any earlier one and shares at most 10 % IoU."""
    x, y, s = box
    for bx, by, bs in boxes:
        iw = max(0, min(x + s, bx + bs) - max(x, bx))
        ih = max(0, min(y + s, by + bs) - max(y, by))
        inter = iw * ih
        if inter > 0.2 * bs * bs or inter > 0.1 * (s * s + bs * bs - inter):
            return False
    return True


def build_dataset(
    cifar: Path, root: Path, n_train: int, n_val: int, size: int, smin: int, smax: int, exemplars: int, seed: int
) -> dict[str, Any]:
    """YOLO-format detection set (images/{train,val}, labels/{train,val}, data.yaml) and a flat
    folder of the training images without labels (unlabelled/).

    `exemplars` > 0: the objects are `exemplars` CIFAR training images per class, shared by the train
    and val canvases (val = the same objects in new scenes: backgrounds, positions, sizes); 0: every
    object a distinct image, train from CIFAR's training split and val from its test split."""
    from PIL import Image

    if root.exists():
        shutil.rmtree(root)
    arrays = np.load(cifar, allow_pickle=False)
    names = [str(n) for n in arrays["class_names"]]
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    rng = np.random.default_rng(seed)
    if exemplars:
        pool = np.concatenate(
            [rng.choice(np.flatnonzero(y_train == c), exemplars, replace=False) for c in range(len(names))]
        )
        pools = {"train": (x_train[pool], y_train[pool]), "val": (x_train[pool], y_train[pool])}
    else:
        pools = {"train": (x_train, y_train), "val": (arrays["x_test"], arrays["y_test"])}
    counts: dict[str, Any] = {}
    for split, n in (("train", n_train), ("val", n_val)):
        xs, ys = pools[split]
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        per_class = np.zeros(len(names), int)
        used: set[int] = set()
        for i in range(n):
            img = background(rng, size)
            boxes: list[tuple[int, int, int]] = []
            lines = []
            for _ in range(int(rng.integers(1, 4))):
                for _try in range(20):
                    s = int(rng.integers(smin, smax + 1))
                    x, y = (int(v) for v in rng.integers(0, size - s + 1, 2))
                    if _overlap_ok((x, y, s), boxes):
                        break
                else:
                    continue
                j = int(rng.integers(0, len(xs)))
                while not exemplars and j in used:  # distinct objects: every CIFAR image at most once
                    j = int(rng.integers(0, len(xs)))
                used.add(j)
                img[y : y + s, x : x + s] = np.asarray(Image.fromarray(xs[j]).resize((s, s), Image.BILINEAR))
                boxes.append((x, y, s))
                c = int(ys[j])
                per_class[c] += 1
                lines.append(f"{c} {(x + s / 2) / size:.6f} {(y + s / 2) / size:.6f} {s / size:.6f} {s / size:.6f}")
            name = f"{split}_{i:05d}"
            Image.fromarray(img).save(root / "images" / split / f"{name}.png")
            (root / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + "\n")
        counts[split] = {"images": n, "objects": int(per_class.sum()), "per_class": per_class.tolist()}
    unlabelled = root / "unlabelled"
    shutil.copytree(root / "images" / "train", unlabelled)
    listed = "".join(f"  {i}: {n}\n" for i, n in enumerate(names))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{listed}")
    return {"yaml": str(root / "data.yaml"), "unlabelled": str(unlabelled), "names": names, **counts}


# ---- 2-5. training, compressing, validating ------------------------------------------------------------------------


def train_yolo(
    source: str, data: str, project: Path, name: str, epochs: int, imgsz: int, batch: int, pruned: bool = False
) -> dict[str, Any]:
    """ultralytics' own trainer (PrunedTrainer for a pruned checkpoint); its best.pt and wall seconds."""
    from ultralytics import YOLO

    extra: dict[str, Any] = {}
    if pruned:
        from edgeprune.ecosystems.ultralytics import PrunedTrainer

        extra["trainer"] = PrunedTrainer
    shutil.rmtree(project / name, ignore_errors=True)
    t0 = time.perf_counter()
    YOLO(source).train(
        data=data, epochs=epochs, imgsz=imgsz, batch=batch, project=str(project), name=name, **TRAIN, **extra
    )
    seconds = time.perf_counter() - t0
    best = project / name / "weights" / "best.pt"
    if not best.is_file():
        raise RuntimeError(f"ultralytics wrote no {best}")
    return {
        "best": str(best),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / epochs, 1),
        "params": checkpoint_params(best),
        "recipe": {
            "source": source,
            "trainer": "PrunedTrainer" if pruned else "ultralytics DetectionTrainer",
            **TRAIN,
            "other_arguments": "ultralytics defaults (optimizer=auto, "
            "lr0, warmup_epochs=3, close_mosaic=10, mosaic/hsv/flip augmentation, val each epoch)",
        },
    }


def checkpoint_params(path: Path | str) -> int:
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    return sum(p.numel() for p in model.parameters())


def validate(ckpt: Path | str, data: str, imgsz: int, batch: int, project: Path, name: str) -> dict[str, Any]:
    """ultralytics' own validator on the val split (conf 0.001, IoU 0.7: its defaults)."""
    from ultralytics import YOLO

    t0 = time.perf_counter()
    metrics = YOLO(str(ckpt)).val(
        data=data, imgsz=imgsz, batch=batch, project=str(project), name=name, exist_ok=True, verbose=False, **COMMON
    )
    box = metrics.box
    return {
        "checkpoint": str(ckpt),
        "map50_95": round(float(box.map), 4),
        "map50": round(float(box.map50), 4),
        "precision": round(float(box.mp), 4),
        "recall": round(float(box.mr), 4),
        "val_seconds": round(time.perf_counter() - t0, 1),
        "params": checkpoint_params(ckpt),
    }


def run_compress(best: str, unlabelled: str, out: Path, budget: str, epochs: int, extra: list[str]) -> dict[str, Any]:
    """The CLI, as a user runs it, in a subprocess of this Python (bench/common.run_compress: a run
    stopped "too noisy to decide" on a busy machine is resumed, twice at most); its log kept beside
    --out. `extra` holds every flag past the budget, data and epochs (`--precision fp32` for the
    rows about pruning and recovery alone)."""
    args = [best, "--budget", budget, "--data", unlabelled, "--epochs", str(epochs), *extra]
    log("  compress " + " ".join([*args, "--out", str(out)]))
    run = common.run_compress(args, out, out.parent / f"{out.name}.log", accept=(0, 1), noisy_retries=2)
    report, seconds = run.report, run.seconds
    base, final = report["baseline"], report["final"]
    recovery = report.get("recovery") or {}
    timings = report.get("timings_s") or {}
    return {
        "command": " ".join(["compress", *args, "--out", str(out)]),
        "exit_code": 0 if report["budget"]["met"] else 1,
        "wall_seconds": round(seconds, 1),
        "budget": report["budget"]["describe"],
        "met": report["budget"]["met"],
        "decision": {
            k: report["budget"]["decision"].get(k) for k in ("verdict", "estimate", "low", "high", "rounds", "busy")
        },
        "baseline_ms": round(base["latency_ms"]["median"], 3),
        "final_ms": round(final["latency_ms"]["median"], 3),
        # the verdict's ratio: final vs baseline timed interleaved in the same rounds (decision.py); the two
        # medians below were timed apart, at different moments of a shared machine's load
        "latency_ratio": round(report["budget"]["decision"]["estimate"], 4),
        "latency_ratio_interval_95": [
            round(report["budget"]["decision"]["low"], 4),
            round(report["budget"]["decision"]["high"], 4),
        ],
        "latency_ratio_of_medians": round(final["latency_ms"]["median"] / base["latency_ms"]["median"], 4),
        "speedup": round(report["speedup"], 3),
        "flops": [base["flops"], final["flops"]],
        "flops_ratio": round(final["flops"] / base["flops"], 4),
        "params": [base["params"], final["params"]],
        "params_ratio": round(final["params"] / base["params"], 4),
        "candidates_measured": report["search"]["candidates_measured"],
        "stop_reason": report["search"]["stop_reason"],
        "accuracy": report.get("accuracy"),
        "recovery": {k: v for k, v in recovery.items() if k != "history"},
        "recovery_history": recovery.get("history"),
        "data": report.get("data"),
        "timings_s": timings,
        "recovery_seconds": recovery.get("seconds", timings.get("recovery")),
        "native": report.get("native"),
        "precision": report.get("precision"),
        "runtime_accuracy": report.get("runtime_accuracy"),
    }


def default_flags_row(comp: dict[str, Any]) -> dict[str, Any]:
    """What the default command published, from its own report: the precision `auto` chose and why,
    mAP50-95 by ultralytics' validator inside the run (baseline, pruned, recovered in PyTorch float32,
    and the published model.onnx on the runtime), and issue 37's check: the published model within
    `PUBLISHED_POINTS` of the float32 recovered one, or float32 published with the reason; and the
    label-free target: the recovered model within `TARGET_POINTS` of the teacher (the run's baseline,
    by the same validator in the same run)."""
    acc, ra, prec = comp.get("accuracy") or {}, comp.get("runtime_accuracy"), comp.get("precision") or {}
    baseline, recovered = acc.get("baseline"), acc.get("recovered")
    published = ra["runtime"] if ra else recovered  # float32 published: the recovered model is what ships
    gap = None if recovered is None or published is None else round(100 * (recovered - published), 2)
    under = None if baseline is None or recovered is None else round(100 * (baseline - recovered), 2)
    return {
        "precision": prec.get("chosen"),
        "why": prec.get("why"),
        "map50_95_in_run": {k: acc.get(k) for k in ("baseline", "pruned", "recovered")},
        "published_on_runtime": ra,
        "published_below_float32_recovered_points": gap,
        "check": f"the published model.onnx within {PUBLISHED_POINTS:g} point(s) of the float32 recovered model's "
        "mAP50-95, or float32 published with the reason",
        "met": prec.get("chosen") == "fp32" or (gap is not None and gap <= PUBLISHED_POINTS),
        "label_free_under_teacher_points": under,
        "label_free_check": f"the float32 recovered model within {TARGET_POINTS:g} points of the teacher's mAP50-95 "
        "(the run's baseline)",
        "label_free_met": under is not None and under <= TARGET_POINTS,
    }


def fidelity_parts(teacher: str, ckpt: Path | str, images: str, n: int = 100) -> dict[str, float]:
    """R² of the model's exported output against the teacher's on `n` val images: pooled over the
    whole (batch, 4 + classes, anchors) tensor as edgeprune's fidelity pools it, and apart for the
    box rows (pixels) and the class-score rows (probabilities)."""
    import torch
    from PIL import Image

    from edgeprune.pipeline.loading import load_model

    files = sorted(Path(images).glob("*.png"))[:n]
    x = (
        torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
        .permute(0, 3, 1, 2)
        .float()
        / 255
    )
    with torch.no_grad():
        want, got = (load_model(p).model.eval()(x).double() for p in (teacher, ckpt))

    def r2(g: Any, w: Any) -> float:
        return round(float(1 - ((g - w) ** 2).sum() / ((w - w.mean()) ** 2).sum()), 4)

    return {
        "pooled": r2(got, want),
        "boxes": r2(got[:, :4], want[:, :4]),
        "class_scores": r2(got[:, 4:], want[:, 4:]),
        "images": len(files),
    }


def ablation_recovery(
    best: str, plan_path: Path, unlabelled: str, dest: Path, epochs: int, batch: int
) -> dict[str, Any]:
    """edgeprune's label-free recovery (`Distill.fit`, as the CLI runs it) on the run's pruned model
    before recovery, with the term for outputs that are not class logits set back to the plain
    per-channel `regression` (what the CLI used before `dense_output`): what the cross-entropy on the
    class scores and the confidence-weighted boxes bring, at the same batch and epochs."""
    import copy

    import torch

    import edgeprune.pipeline.recovery.distill as distill
    from edgeprune.ecosystems.ultralytics import Ultralytics
    from edgeprune.pipeline.data import ModelInputs, load_data
    from edgeprune.pipeline.loading import load_model
    from edgeprune.pipeline.prune.apply import apply
    from edgeprune.pipeline.prune.plan import Plan
    from edgeprune.pipeline.recovery.evaluate import Fidelity
    from edgeprune.pipeline.recovery.trainer import TrainConfig

    loaded = load_model(best)
    teacher = loaded.model
    with torch.enable_grad():
        student = apply(copy.deepcopy(teacher), Plan.load(plan_path), loaded.example_inputs)
    inputs = ModelInputs(loaded.example_inputs, loaded.input_names, loaded.preprocess)
    data = load_data(unlabelled, batch_size=batch, model=inputs)
    config = TrainConfig(epochs=epochs, lr=distill.Distill.default_lr)
    original = distill.dense_output
    distill.dense_output = distill.regression
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try:
        fit = distill.Distill().fit(
            student,
            teacher,
            data,
            config,
            Fidelity(teacher, loaded.example_inputs),
            None,
            lambda line: log("  " + line),
        )
    finally:
        distill.dense_output = original
    seconds = time.perf_counter() - t0
    info = Ultralytics().save(student, loaded, None, dest)
    return {
        "checkpoint": str(dest),
        "params": info["params"],
        "recovery_seconds": round(seconds, 1),
        "epochs": epochs,
        "batch": batch,
        "lr": config.lr,
        "history": fit.history,
    }


def rebuild_unrecovered(best: str, plan_path: Path, dest: Path, state: Any = None) -> dict[str, Any]:
    """The run's plan applied to the teacher as edgeprune loads it (the pruned model before recovery;
    with `state`, those weights loaded into it), written as an ultralytics checkpoint by the door's own `save`."""
    import copy

    import torch

    from edgeprune.ecosystems.ultralytics import Ultralytics
    from edgeprune.pipeline.loading import load_model
    from edgeprune.pipeline.prune.apply import apply
    from edgeprune.pipeline.prune.plan import Plan

    loaded = load_model(best)
    plan = Plan.load(plan_path)
    with torch.enable_grad():
        pruned = apply(copy.deepcopy(loaded.model), plan, loaded.example_inputs)
    if state is not None:
        pruned.load_state_dict(state)
    info = Ultralytics().save(pruned, loaded, plan, dest)
    return {"checkpoint": str(dest), "params": info["params"], "params_before": info["params_before"]}


def same_structure(a: Path | str, b: Path | str) -> bool:
    """Whether two checkpoints hold models of the same parameter shapes."""
    import torch

    shapes = [
        {
            k: tuple(v.shape)
            for k, v in torch.load(p, map_location="cpu", weights_only=False)["model"].state_dict().items()
        }
        for p in (a, b)
    ]
    return shapes[0] == shapes[1]


def sha256(path: Path | str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def code_fingerprint() -> str:
    """sha256 of edgeprune's source: the steps from compress on are redone when the code changes."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((REPO / "edgeprune").rglob("*.py")):
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


# ---- the benchmark -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cifar",
        type=Path,
        default=DEFAULT_CIFAR,
        help="CIFAR-10 .npz (x_train, y_train, x_test, y_test, class_names)",
    )
    p.add_argument("--work", type=Path, default=Path("/tmp/yolo_bench"), help="where every step is kept (resumable)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--canvas", type=int, default=160, help="canvas side = training and validation imgsz (default 160)")
    p.add_argument("--train-images", type=int, default=800)
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument(
        "--exemplars",
        type=int,
        default=40,
        help="CIFAR images per class shared by train and val canvases; 0: distinct objects, val from the test split",
    )
    p.add_argument("--epochs", type=int, default=24, help="teacher epochs (ultralytics' trainer, from scratch)")
    p.add_argument("--batch", type=int, default=16, help="ultralytics' training batch (teacher and fine-tunes)")
    p.add_argument("--budget", default="50%")
    p.add_argument("--recover-epochs", type=int, default=10, help="edgeprune's label-free recovery, --epochs")
    p.add_argument(
        "--compress-args",
        default="--batch-size 16",
        help="more compress options (recorded; default '--batch-size 16': 800 images at compress's "
        "default 128 make 6 steps an epoch)",
    )
    p.add_argument("--ft-epochs", type=int, default=10, help="ultralytics' labelled fine-tune of the pruned checkpoint")
    p.add_argument(
        "--skip-ft-after-label-free", action="store_true", help="leave out the fine-tune from the label-free checkpoint"
    )
    p.add_argument(
        "--skip-ablation",
        action="store_true",
        help="leave out the label-free row with the plain per-channel regression term (the term before "
        "dense_output), same batch and epochs",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--only-default",
        action="store_true",
        help="stop after the default command's row (auto precision, mAP inside the run)",
    )
    a = p.parse_args(argv)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(a.work / "ultralytics_config"))  # no writes to the user's settings
    work = a.work.resolve()
    steps = Steps(work, log)
    runs = work / "runs"
    size, vb = a.canvas, 32

    ds_cfg = {
        "cifar": str(a.cifar),
        "train": a.train_images,
        "val": a.val_images,
        "canvas": size,
        "sizes": [32, 80],
        "exemplars": a.exemplars,
        "seed": a.seed,
    }
    ds = steps.run(
        "dataset",
        ds_cfg,
        lambda: build_dataset(a.cifar, work / "data", a.train_images, a.val_images, size, 32, 80, a.exemplars, a.seed),
    )
    yaml = ds["yaml"]
    t_cfg = {"dataset": ds_cfg, "epochs": a.epochs, "batch": a.batch}
    teacher = steps.run(
        "teacher", t_cfg, lambda: train_yolo("yolov8n.yaml", yaml, runs, "teacher", a.epochs, size, a.batch)
    )
    best = teacher["best"]
    result: dict[str, Any] = {
        **header("yolo_distill"),
        "protocol": {
            "dataset": f"{size}x{size} canvases, 1-3 CIFAR-10 images pasted at random positions and sizes 32-80 px "
            "(overlap limited), box = the pasted square, class = its CIFAR class; "
            + (
                f"{a.exemplars} CIFAR training images per class shared by the train and val canvases "
                "(val = the same objects in new scenes)"
                if a.exemplars
                else "train objects from CIFAR's training split, val objects from its test split"
            ),
            "metric": f"ultralytics' validator (YOLO(ckpt).val, conf 0.001, IoU 0.7) on the {a.val_images} "
            f"val canvases, imgsz {size}",
            "compress": "ONNX Runtime CPU, 1 thread, --precision fp32 (pruning only, no quantization), default search "
            "(guided), default method (l1); --data = the training images without labels, so recovery is "
            "edgeprune's label-free default (distillation from the unpruned model: outputs + intermediate "
            "features), fidelity = R² of the outputs against the unpruned model's on a held-out 10 % of them",
            "training": "CPU, ultralytics defaults but device=cpu, workers=0, amp=False, plots=False, seed 0, "
            "deterministic",
            "seconds": "wall seconds on a shared 2-core machine, niced; other sessions' load varies, "
            "so compare them loosely",
        },
        "dataset": ds,
        "teacher": teacher,
        "rows": {},
        "notes": [
            (
                "mAP rows: ultralytics' validator on the val canvases; fidelity_r2_on_val: R² of each row's exported "
                "output (batch, 4 + 10, anchors) against the teacher's on 100 val canvases, pooled, box rows alone, "
                "class-score rows alone"
            ),
            "pruned = the plan of the compress run applied to the teacher (edgeprune.pipeline.prune.apply), untrained",
            (
                "label_free = compress's own model_ultralytics.pt (its default label-free recovery, --epochs and "
                "--batch-size as recorded in compress.command, default lr); label_free_regression_term = the same "
                "recovery with the output term edgeprune had before dense_output (ablation_recovery)"
            ),
            "recovery_seconds are wall seconds on a 2-core machine shared with other sessions' training: loose",
        ],
    }

    def save() -> None:
        atomic.write_json(a.out, result)

    rows = result["rows"]
    rows["teacher"] = steps.run(
        "val_teacher", {"teacher": t_cfg}, lambda: validate(best, yaml, size, vb, runs, "val_teacher")
    )
    log(f"teacher mAP50-95 {rows['teacher']['map50_95']:.4f}  mAP50 {rows['teacher']['map50']:.4f}")
    save()

    default_out = work / "compressed_default"
    d_cfg = {
        "teacher": t_cfg,
        "budget": a.budget,
        "epochs": a.recover_epochs,
        "extra": ["--batch-size", "16", "--metric", f"ultralytics:{yaml}"],
        "code": code_fingerprint(),
    }

    def default_step() -> dict[str, Any]:
        shutil.rmtree(default_out, ignore_errors=True)
        return run_compress(best, ds["unlabelled"], default_out, a.budget, a.recover_epochs, d_cfg["extra"])

    default = steps.run("compress_default", d_cfg, default_step)
    result["default_flags"] = {"compress": default, **default_flags_row(default)}
    log(
        f"default flags: {default['precision'] and default['precision'].get('chosen')}, met {default['met']}, "
        f"mAP50-95 in the run {result['default_flags']['map50_95_in_run']}, published on the runtime "
        f"{(default['runtime_accuracy'] or {}).get('runtime')}, label-free "
        f"{result['default_flags']['label_free_under_teacher_points']} points under the teacher"
    )
    save()
    if a.only_default:
        return 0

    out = work / "compressed"
    extra = ["--precision", "fp32", *a.compress_args.split()]
    c_cfg = {
        "teacher": t_cfg,
        "budget": a.budget,
        "epochs": a.recover_epochs,
        "extra": extra,
        "code": code_fingerprint(),
    }

    def compress_step() -> dict[str, Any]:  # afresh: edgeprune's own work/ would resume a run made by other code
        shutil.rmtree(out, ignore_errors=True)
        return run_compress(best, ds["unlabelled"], out, a.budget, a.recover_epochs, extra)

    comp = steps.run("compress", c_cfg, compress_step)
    comp["stages_seconds"] = round(
        sum((comp.get("timings_s") or {}).values()), 1
    )  # wall_seconds: the last call, short when it resumed
    result["compress"] = comp
    result["code_fingerprint"] = c_cfg["code"]  # sha256 of edgeprune/**/*.py at the compress run and every row after it
    log(
        f"compress: met {comp['met']}, latency ratio {comp['latency_ratio']}, params ratio {comp['params_ratio']}, "
        f"recovery {comp['recovery_seconds']} s"
    )
    save()

    unrec = work / "pruned_unrecovered.pt"
    steps.run("rebuild_unrecovered", c_cfg, lambda: rebuild_unrecovered(best, out / "plan.json", unrec))
    native = out / "model_ultralytics.pt"
    result["structure_check"] = {"unrecovered_and_label_free_same_shapes": same_structure(unrec, native)}
    rows["pruned"] = steps.run("val_pruned", c_cfg, lambda: validate(unrec, yaml, size, vb, runs, "val_pruned"))
    rows["label_free"] = steps.run(
        "val_label_free", c_cfg, lambda: validate(native, yaml, size, vb, runs, "val_label_free")
    )
    rows["label_free"]["recovery_seconds"] = comp["recovery_seconds"]
    rows["label_free"]["recovery"] = (
        f"edgeprune label-free distillation, {a.recover_epochs} epochs on {ds['train']['images']} unlabelled images"
    )
    for name in ("pruned", "label_free"):
        log(f"{name} mAP50-95 {rows[name]['map50_95']:.4f}  mAP50 {rows[name]['map50']:.4f}")
    save()

    if not a.skip_ablation:
        batch = int(extra[extra.index("--batch-size") + 1]) if "--batch-size" in extra else 128
        k_cfg = {"compress": c_cfg, "epochs": a.recover_epochs, "batch": batch}
        abl = steps.run(
            "ablation_recovery",
            k_cfg,
            lambda: ablation_recovery(
                best, out / "plan.json", ds["unlabelled"], work / "label_free_regression.pt", a.recover_epochs, batch
            ),
        )
        rows["label_free_regression_term"] = {
            **steps.run(
                "val_label_free_regression",
                k_cfg,
                lambda: validate(abl["checkpoint"], yaml, size, vb, runs, "val_label_free_regression"),
            ),
            "recovery_seconds": abl["recovery_seconds"],
            "training": abl,
            "recovery": f"as label_free, but every output term the plain per-channel regression (edgeprune before "
            f"dense_output; in this process), batch {batch}, {a.recover_epochs} epochs, same plan and images",
        }
        log(f"label_free_regression_term mAP50-95 {rows['label_free_regression_term']['map50_95']:.4f}")
        save()

    f_cfg = {"compress": c_cfg, "epochs": a.ft_epochs, "batch": a.batch}
    ft = steps.run(
        "ft_pruned",
        f_cfg,
        lambda: train_yolo(str(unrec), yaml, runs, "ft_pruned", a.ft_epochs, size, a.batch, pruned=True),
    )
    rows["ultralytics_finetune"] = {
        **steps.run("val_ft_pruned", f_cfg, lambda: validate(ft["best"], yaml, size, vb, runs, "val_ft_pruned")),
        "recovery_seconds": ft["seconds"],
        "training": ft,
        "recovery": f"ultralytics' trainer (PrunedTrainer) with labels, {a.ft_epochs} epochs",
    }
    log(f"ultralytics fine-tune mAP50-95 {rows['ultralytics_finetune']['map50_95']:.4f}")
    save()
    if not a.skip_ft_after_label_free:
        ft2 = steps.run(
            "ft_label_free",
            f_cfg,
            lambda: train_yolo(str(native), yaml, runs, "ft_label_free", a.ft_epochs, size, a.batch, pruned=True),
        )
        rows["label_free_then_ultralytics"] = {
            **steps.run(
                "val_ft_label_free", f_cfg, lambda: validate(ft2["best"], yaml, size, vb, runs, "val_ft_label_free")
            ),
            "recovery_seconds": round((comp["recovery_seconds"] or 0) + ft2["seconds"], 1),
            "training": ft2,
            "recovery": f"the label-free checkpoint, then ultralytics' trainer with labels, {a.ft_epochs} epochs",
        }
        log(f"label-free then ultralytics mAP50-95 {rows['label_free_then_ultralytics']['map50_95']:.4f}")

    val_images = str(Path(yaml).parent / "images" / "val")
    for name, row in rows.items():
        if name != "teacher":
            row["fidelity_r2_on_val"] = steps.run(
                f"fidelity_{name}",
                {"checkpoint": row["checkpoint"], "sha256": sha256(row["checkpoint"]), "teacher": sha256(best)},
                lambda: fidelity_parts(best, row["checkpoint"], val_images),  # noqa: B023 - called at once
            )
    gap = 100 * (rows["teacher"]["map50_95"] - rows["label_free"]["map50_95"])
    result["target"] = {
        "claim": f"label-free recovery within {TARGET_POINTS:g} points of the teacher's mAP50-95",
        "teacher": rows["teacher"]["map50_95"],
        "label_free": rows["label_free"]["map50_95"],
        "gap_points": round(gap, 2),
        "met": gap <= TARGET_POINTS,
    }
    log(f"target: label-free {gap:.2f} points under the teacher -> {'met' if gap <= TARGET_POINTS else 'NOT met'}")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
