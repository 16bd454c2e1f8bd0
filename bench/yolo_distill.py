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
               on the training images with their labels withheld
  ultralytics_finetune            the pruned, unrecovered checkpoint fine-tuned WITH labels by ultralytics'
                                  own trainer (`YOLO(ckpt).train(..., trainer=PrunedTrainer)`)
  label_free_then_ultralytics     the label-free checkpoint, then that same labelled fine-tune
with the wall seconds of each recovery, the measured latency ratio, FLOPs and parameter ratios, and
the target check: label-free recovery within 2 points of the teacher's mAP50-95.

The dataset: `--canvas`-pixel canvases (smooth colour field + texture + pixel noise) with 1-3 CIFAR-10
images each, pasted at random positions and sizes (32-80 px, overlap limited), box = the pasted
square, class = its CIFAR class; train objects from CIFAR's training split, val objects from its
test split, all seeded. edgeprune's `--data` gets a flat folder of the training images alone.

`compress` runs with `--precision fp32` (pruning only, no int8), so the comparison is about pruning
and recovery, on ONNX Runtime CPU, 1 thread (the default runtime); training runs on the CPU.

Every step is cached in `--work` (default /tmp/yolo_bench), so a re-run resumes after the last
finished step (delete a step's `steps/<name>.json` to redo it):

    YOLO_OFFLINE=1 nice -n 10 .venv-zoo/bin/python bench/yolo_distill.py [--work /tmp/yolo_bench]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing downloaded: ultralytics' online checks short-circuit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.common import header  # noqa: E402
from edgeprune import atomic  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "yolo_distill.json"
DEFAULT_CIFAR = REPO.parent / "shared" / "data" / "cifar10" / "cifar10.npz"
#: ultralytics' trainer and validator here: CPU, no plots (no fonts to download), no AMP check, no worker processes
COMMON = {"device": "cpu", "workers": 0, "plots": False}
TRAIN = {**COMMON, "amp": False, "seed": 0, "deterministic": True, "exist_ok": True, "verbose": False}
TARGET_POINTS = 2.0  # label-free within this many mAP50-95 points of the teacher


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


class Steps:
    """Each step's result as JSON in `work/steps/`, with the settings it ran under: a re-run with the
    same settings reuses it, other settings redo it."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "steps"
        self.dir.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, config: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.dir / f"{name}.json"
        try:
            done = json.loads(path.read_text())
            if done.get("config") == config:
                log(f"{name}: cached ({path})")
                return done["result"]
        except (OSError, ValueError):
            pass
        log(f"{name}: running")
        t0 = time.perf_counter()
        result = fn()
        result.setdefault("step_seconds", round(time.perf_counter() - t0, 1))
        atomic.write_json(path, {"config": config, "result": result})
        return result


# ---- 1. the dataset -------------------------------------------------------------------------------------------------


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour field, a mid-frequency texture and pixel noise, uint8 HWC."""
    from PIL import Image

    g = int(rng.integers(3, 9))
    low = Image.fromarray(rng.uniform(0, 255, (g, g, 3)).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    m = int(rng.integers(12, 41))
    mid = Image.fromarray((rng.normal(0, 1, (m, m, 3)) * 40 + 128).clip(0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    img = (np.asarray(low, np.float32) * rng.uniform(0.5, 0.9) + 30
           + (np.asarray(mid, np.float32) - 128) * rng.uniform(0.2, 1.0)
           + rng.normal(0, rng.uniform(3, 15), (size, size, 3)))
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


def build_dataset(cifar: Path, root: Path, n_train: int, n_val: int, size: int, smin: int, smax: int, seed: int) -> dict[str, Any]:
    """YOLO-format detection set (images/{train,val}, labels/{train,val}, data.yaml) and a flat
    folder of the training images without labels (unlabelled/)."""
    from PIL import Image

    if root.exists():
        shutil.rmtree(root)
    arrays = np.load(cifar, allow_pickle=False)
    names = [str(n) for n in arrays["class_names"]]
    pools = {"train": (arrays["x_train"], arrays["y_train"]), "val": (arrays["x_test"], arrays["y_test"])}
    rng = np.random.default_rng(seed)
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
                while j in used:  # every CIFAR image at most once
                    j = int(rng.integers(0, len(xs)))
                used.add(j)
                img[y:y + s, x:x + s] = np.asarray(Image.fromarray(xs[j]).resize((s, s), Image.BILINEAR))
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
