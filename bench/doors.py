"""Each ecosystem door end to end at a latency budget, as a user runs it: the file they hold in,
`compress` at --budget (50 % by default), and the pruned model back in their library's format,
loaded by that library. One row per door: budget met?, the final latency ratio, parameter ratio,
wall seconds, and what loading the written output gave.

Runs in the zoo environment (timm, torchvision, transformers, ultralytics), one `compress` at a time:

    .venv-zoo/bin/python bench/doors.py [--budget 50%] [--only timm,torchvision,bert,distilbert,vit,yolo11n]
    .venv-zoo/bin/python bench/doors.py --only bert+depth,distilbert+depth,vit+depth   # --depth on: layers go too
    .venv-zoo/bin/python bench/doors.py --yolo-checkpoint /tmp/yolo_bench/.../best.pt   # a trained YOLOv8n too

Models are random weights from small configs (Hugging Face: hidden 256, 4 layers, 4 heads, MLP 1024,
128 tokens; ViT 224/16), the library's own default sizes elsewhere; YOLO11n is trained for one epoch
by ultralytics on a few synthetic images first, so the door sees a real checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import compress_run, header  # noqa: E402
from edgeprune import atomic  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "doors.json"
HF_SMALL = {
    "num_hidden_layers": 4,
    "hidden_size": 256,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "num_labels": 3,
    "vocab_size": 1000,
}


def _hf(kind: str, work: Path, depth: bool = False) -> tuple[list[str], Callable[[Path], dict[str, Any]]]:
    """A save_pretrained folder of a small config; the check loads hf_model with from_pretrained.
    `depth`: with --depth on, whole layers may go too; its --data (64 random inputs, to score the
    layers) is only that: --recover none, since random weights have nothing to recover."""
    import numpy as np
    import transformers as tf

    configs = {
        "bert": lambda: tf.BertForSequenceClassification(tf.BertConfig(**HF_SMALL)),
        "distilbert": lambda: tf.DistilBertForSequenceClassification(
            tf.DistilBertConfig(n_layers=4, dim=256, n_heads=4, hidden_dim=1024, num_labels=3, vocab_size=1000)
        ),
        "vit": lambda: tf.ViTForImageClassification(
            tf.ViTConfig(**{k: v for k, v in HF_SMALL.items() if k != "vocab_size"}, image_size=224, patch_size=16)
        ),
    }
    folder = work / kind
    configs[kind]().save_pretrained(folder)
    extra: list[str] = []
    if depth:
        rng = np.random.default_rng(0)
        data = work / f"{kind}_inputs.npz"
        if kind == "vit":
            np.savez(data, pixel_values=rng.standard_normal((64, 3, 224, 224), dtype=np.float32))
        else:
            np.savez(data, input_ids=rng.integers(0, HF_SMALL["vocab_size"], (64, 128)))
        extra = ["--depth", "on", "--data", str(data), "--recover", "none"]

    def check(out: Path) -> dict[str, Any]:
        auto = tf.AutoModelForImageClassification if kind == "vit" else tf.AutoModelForSequenceClassification
        model = auto.from_pretrained(out / "hf_model")
        return {
            "loads_with": auto.__name__,
            "params": sum(p.numel() for p in model.parameters()),
            "layers": model.config.num_hidden_layers,
        }

    return [str(folder), *extra], check


def _named(arch: str, work: Path) -> tuple[list[str], Callable[[Path], dict[str, Any]]]:
    """A state dict of the named architecture (random weights); the check is edgeprune.load."""
    import torch

    from edgeprune.pipeline.loading import build_arch

    path = work / (arch.replace(":", "_") + ".pt")
    torch.save(build_arch(arch, None).state_dict(), path)

    def check(out: Path) -> dict[str, Any]:
        import edgeprune

        model = edgeprune.load(out)
        return {"loads_with": "edgeprune.load", "params": sum(p.numel() for p in model.parameters())}

    return [str(path), "--arch", arch], check


def _yolo(checkpoint: Path | None, name: str, work: Path) -> tuple[list[str], Callable[[Path], dict[str, Any]]]:
    """An ultralytics checkpoint (given, or trained one epoch here); the check is YOLO() load + predict."""
    from ultralytics import YOLO

    if checkpoint is None:
        checkpoint = _one_epoch(name, work)

    def check(out: Path) -> dict[str, Any]:
        import numpy as np

        model = YOLO(str(out / "model_ultralytics.pt"))
        model.predict(np.zeros((160, 160, 3), dtype=np.uint8), imgsz=160, verbose=False)
        return {"loads_with": "ultralytics.YOLO, predict", "params": sum(p.numel() for p in model.model.parameters())}

    return [str(checkpoint)], check


def _one_epoch(name: str, work: Path) -> Path:
    """`name` trained by ultralytics for one epoch on 16 synthetic 160x160 images: a real best.pt."""
    import numpy as np
    from PIL import Image
    from ultralytics import YOLO

    root = work / "det"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(16 if split == "train" else 4):
            img = rng.integers(0, 60, (160, 160, 3), dtype=np.uint8)
            x, y, s = [*rng.integers(10, 90, 2).tolist(), int(rng.integers(30, 60))]
            img[y : y + s, x : x + s] = (200, 60, 60)
            Image.fromarray(img).save(root / split / "images" / f"{i}.png")
            (root / split / "labels" / f"{i}.txt").write_text(
                f"0 {(x + s / 2) / 160} {(y + s / 2) / 160} {s / 160} {s / 160}\n"
            )
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: train/images\nval: val/images\nnames:\n  0: box\n")
    YOLO(f"{name}.yaml").train(
        data=str(yaml),
        epochs=1,
        imgsz=160,
        batch=8,
        workers=0,
        device="cpu",
        amp=False,
        plots=False,
        project=str(work / "runs"),
        name=name,
        exist_ok=True,
        verbose=False,
    )
    return work / "runs" / name / "weights" / "best.pt"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="50%")
    p.add_argument(
        "--only", default="timm,torchvision,bert,distilbert,vit,yolo11n", help="comma-separated doors to run"
    )
    p.add_argument("--yolo-checkpoint", type=Path, help="a trained YOLOv8n best.pt to add as a row")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="doors_"))
    doors: dict[str, Callable[[], tuple[list[str], Callable[[Path], dict[str, Any]]]]] = {
        "timm": lambda: _named("timm:resnet50", work),
        "torchvision": lambda: _named("torchvision:mobilenet_v3_large", work),
        "bert": lambda: _hf("bert", work),
        "distilbert": lambda: _hf("distilbert", work),
        "vit": lambda: _hf("vit", work),
        "bert+depth": lambda: _hf("bert", work, depth=True),
        "distilbert+depth": lambda: _hf("distilbert", work, depth=True),
        "vit+depth": lambda: _hf("vit", work, depth=True),
        "yolo11n": lambda: _yolo(None, "yolo11n", work),
    }
    rows = a.only.split(",") + (["yolov8n"] if a.yolo_checkpoint else [])
    if a.yolo_checkpoint:
        doors["yolov8n"] = lambda: _yolo(a.yolo_checkpoint, "yolov8n", work)
    result: dict[str, Any] = {
        **header("doors"),
        "budget": a.budget,
        "protocol": "compress --budget B --precision fp32, ort-cpu, "
        "1 thread; random weights except the ultralytics checkpoints",
        "rows": {},
    }
    if a.out.exists():  # keep the rows of doors not run this time
        ran = {f"{name}@{a.budget}" for name in rows}
        result["rows"] = {k: v for k, v in json.loads(a.out.read_text()).get("rows", {}).items() if k not in ran}
    for name in rows:
        argv_in, check = doors[name]()
        out = work / f"out_{name}"
        log = work / f"out_{name}.log"
        run = compress_run([*argv_in, "--budget", a.budget, "--precision", "fp32"], out, log)
        row: dict[str, Any] = {"exit": run.rc, "seconds": run.seconds}
        if (rep := run.report) is not None:
            row.update(
                met=rep["budget"]["met"],
                latency_ratio=round(1 / rep["speedup"], 4),
                decision=rep["budget"]["decision"],
                baseline_ms=rep["baseline"]["latency_ms"]["median"],
                params_ratio=round(rep["final"]["params"] / rep["baseline"]["params"], 4),
                flops_ratio=round(rep["final"]["flops"] / rep["baseline"]["flops"], 4),
                candidates=rep["search"]["candidates_measured"],
                native=rep.get("native"),
                input_shape=rep["model"]["input_shape"],
                constraint=rep["model"].get("constraint"),
            )
            try:
                row["output"] = check(out)
            except Exception as err:  # noqa: BLE001 - a row records what loading the output gave
                row["output"] = {"error": f"{type(err).__name__}: {err}"}
        else:
            text = log.read_text()
            row["error"] = [line for line in text.splitlines() if line.startswith("error")][-1:] or text[-300:]
        result["rows"][f"{name}@{a.budget}"] = row
        print(
            name,
            json.dumps({k: row.get(k) for k in ("exit", "met", "latency_ratio", "params_ratio", "seconds", "error")}),
            flush=True,
        )
        atomic.write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
