"""The ultralytics door (edgeprune/ecosystems/ultralytics.py): the best.pt ultralytics' own trainer
writes in, a checkpoint `YOLO()` loads, predicts, validates and trains (with `PrunedTrainer`) out.

A tiny synthetic detection set (coloured rectangles, YOLO-format labels) is written once; YOLOv8n and
YOLO11n are trained on it for one epoch at 64x64 by ultralytics itself, so the checkpoints are
exactly what a user holds (half precision, frozen). Budgets are in FLOPs, counted, so the search is
deterministic and quick (the baseline and final models are still timed, briefly).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("ultralytics")

from ultralytics import YOLO

from edgeprune.cli import main
from edgeprune.ecosystems.ultralytics import PrunedTrainer, Ultralytics, pruned_trainer
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.counting import count
from edgeprune.pipeline.loading import load_model

IMGSZ = 64
NAMES = ("red", "green")
#: what ultralytics' trainer is run with here: one epoch, CPU, no plots (no fonts to download), no AMP check
TRAIN = {
    "epochs": 1,
    "imgsz": IMGSZ,
    "batch": 8,
    "workers": 0,
    "device": "cpu",
    "amp": False,
    "plots": False,
    "verbose": False,
    "exist_ok": True,
    "seed": 0,
}
FAST = ("--precision", "fp32", "--warmup", "2", "--repeats", "10")
NATIVE = "model_ultralytics.pt"


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_cli(*args: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def write_dataset(root: Path, names: tuple[str, ...] = NAMES, n_train: int = 16, n_val: int = 8) -> Path:
    """Images of grey with one or two filled rectangles, one class per colour; returns data.yaml."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            img = np.full((IMGSZ, IMGSZ, 3), 114, np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 3))):
                c = int(rng.integers(0, 2))
                w, h = (int(v) for v in rng.integers(IMGSZ // 6, IMGSZ // 2, 2))
                x0, y0 = int(rng.integers(0, IMGSZ - w)), int(rng.integers(0, IMGSZ - h))
                img[y0 : y0 + h, x0 : x0 + w] = colours[c]
                lines.append(
                    f"{c} {(x0 + w / 2) / IMGSZ:.6f} {(y0 + h / 2) / IMGSZ:.6f} {w / IMGSZ:.6f} {h / IMGSZ:.6f}"
                )
            Image.fromarray(img).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    listed = "".join(f"  {i}: {n}\n" for i, n in enumerate(names))
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{listed}")
    return yaml


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shapes"))


def trained(cfg: str, data: Path, project: Path) -> Path:
    """best.pt as ultralytics' own trainer writes it."""
    model = YOLO(cfg)
    model.train(data=str(data), project=str(project), name="base", val=False, **TRAIN)
    best = project / "base" / "weights" / "best.pt"
    assert best.is_file()
    return best


def compressed(ckpt: Path, out: Path, share: float, *extra: str) -> dict[str, Any]:
    """The CLI on a checkpoint, with a FLOPs budget at `share` of the model's."""
    loaded = load_model(ckpt)
    flops = count(loaded.model, loaded.example_inputs).flops
    rc, stdout, err = run_cli(ckpt, "--budget", f"{flops * share / 1e6:.3f}MFLOPs", "--out", out, *FAST, *extra)
    return {"rc": rc, "out": out, "stdout": stdout, "err": err, "ckpt": ckpt, "params_before": params(loaded.model)}


@pytest.fixture(scope="module")
def v8(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("v8")
    return compressed(trained("yolov8n.yaml", data, root / "runs"), root / "out", 0.5)


@pytest.fixture(scope="module")
def v11(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("v11")
    return compressed(trained("yolo11n.yaml", data, root / "runs"), root / "out", 0.7, "--analysis-time", "30")


def native_of(run: dict[str, Any]) -> Path:
    assert run["rc"] == 0, run["err"]
    assert "Traceback" not in run["err"] + run["stdout"]
    return Path(run["out"]) / NATIVE


# ---- in -----------------------------------------------------------------------------------------------------------


def test_loads_the_trainers_checkpoint(v8: dict[str, Any]) -> None:
    raw = torch.load(v8["ckpt"], map_location="cpu", weights_only=False)
    held = raw["ema"] if raw.get("ema") is not None else raw["model"]
    assert next(held.parameters()).dtype == torch.float16 and not any(p.requires_grad for p in held.parameters())
    loaded = load_model(v8["ckpt"])
    assert loaded.ecosystem == "ultralytics"
    assert loaded.input_shape == (1, 3, IMGSZ, IMGSZ)  # from train_args['imgsz']
    assert next(loaded.model.parameters()).dtype == torch.float32 and not loaded.model.training
    assert loaded.preprocess is not None and loaded.preprocess.size == (IMGSZ, IMGSZ) and loaded.preprocess.mean is None
    assert loaded.input_names == ("images",)
    native = json.loads(json.dumps(loaded.native))  # JSON as it stands
    assert native["task"] == "detect" and native["names"] == {"0": "red", "1": "green"}
    assert native["train_args"]["imgsz"] == IMGSZ and native["version"]
    # the head returns its predictions alone (as ultralytics' ONNX export does), not the features beside them
    out = loaded.model(*loaded.example_inputs)
    assert isinstance(out, torch.Tensor) and out.shape[:2] == (1, 4 + len(NAMES))
    other = load_model(v8["ckpt"], input_shape=(1, 3, 96, 128))
    assert other.input_shape == (1, 3, 96, 128) and other.preprocess is not None and other.preprocess.size == (96, 128)


def test_loads_other_ultralytics_files(v8: dict[str, Any], tmp_path: Path) -> None:
    """A mid-training checkpoint (model None, the EMA held), a module saved whole, and `--arch ultralytics:NAME`."""
    raw = torch.load(v8["ckpt"], map_location="cpu", weights_only=False)
    ema = tmp_path / "last.pt"
    torch.save(dict(raw, model=None, ema=raw["model"]), ema)
    assert load_model(ema).ecosystem == "ultralytics"
    whole = tmp_path / "module.pt"
    torch.save(raw["model"], whole)
    loaded = load_model(whole)
    assert loaded.ecosystem == "ultralytics" and loaded.input_shape == (1, 3, IMGSZ, IMGSZ)  # model.args has imgsz
    built = load_model(None, arch="ultralytics:yolov8n", input_shape=(1, 3, IMGSZ, IMGSZ))
    assert built.ecosystem == "ultralytics" and built.native["task"] == "detect"
    with pytest.raises(EdgepruneError, match="ultralytics cannot build"):
        load_model(None, arch="ultralytics:yolov99z")


@pytest.mark.parametrize("held", [{"model": None, "ema": None}, {}, "state_dict"])
def test_checkpoint_without_a_model_is_one_line(v8: dict[str, Any], tmp_path: Path, held: Any) -> None:
    raw = torch.load(v8["ckpt"], map_location="cpu", weights_only=False)
    if held == "state_dict":
        held = {"model": raw["model"].float().state_dict(), "ema": None}
    stub = {k: v for k, v in raw.items() if k not in ("model", "ema")} | held
    path = tmp_path / "stub.pt"
    torch.save(stub, path)
    rc, _, err = run_cli(path, "--budget", "1MFLOPs", "--out", tmp_path / "out")
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    assert "holds no model under 'model' or 'ema'" in lines[0] and "best.pt" in lines[0]
    assert not (tmp_path / "out").exists()


def test_claims_only_ultralytics_dicts() -> None:
    """Another library's checkpoint with a state dict and training arguments is left to the plain path."""
    assert not Ultralytics.claims_object({"model": {"w": torch.zeros(1)}, "train_args": {"lr": 0.1}})
    assert not Ultralytics.claims_object({"state_dict": {"w": torch.zeros(1)}})
    assert not Ultralytics.claims_object(torch.nn.Linear(1, 1))


def test_without_ultralytics_installed_names_the_extra(v8: dict[str, Any], tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['ultralytics'] = None\n"
        "import edgeprune.ecosystems.ultralytics as door\n"
        "from edgeprune.cli import main\n"
        f"sys.exit(main([{str(v8['ckpt'])!r}, '--budget', '1MFLOPs', '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'edgeprune[ultralytics]'" in done.stderr and "Traceback" not in done.stderr


# ---- out ----------------------------------------------------------------------------------------------------------


def test_writes_an_ultralytics_checkpoint(v8: dict[str, Any]) -> None:
    native = native_of(v8)
    assert native.is_file()
    report = json.loads((Path(v8["out"]) / "report.json").read_text())
    assert report["native"]["path"] == NATIVE and report["native"]["ecosystem"] == "ultralytics"
    assert "PrunedTrainer" in report["native"]["train"]
    ckpt = torch.load(native, map_location="cpu", weights_only=False)
    model = ckpt["model"]
    assert type(model).__name__ == "DetectionModel" and ckpt["ema"] is None and ckpt["epoch"] == -1
    assert next(model.parameters()).dtype == torch.float16 and not any(p.requires_grad for p in model.parameters())
    assert ckpt["train_args"]["imgsz"] == IMGSZ and ckpt["version"] and ckpt["date"]
    assert params(model) < 0.7 * v8["params_before"]
    assert not any("export" in vars(m) for m in model.modules())  # the heads back in ultralytics' own mode


def test_yolo_loads_predicts_validates_exports(v8: dict[str, Any], data: Path) -> None:
    yolo = YOLO(str(native_of(v8)))
    assert yolo.task == "detect" and params(yolo.model) < 0.7 * v8["params_before"]
    image = np.full((IMGSZ, IMGSZ, 3), 114, np.uint8)
    image[8:40, 8:40] = (30, 30, 220)  # BGR, as ultralytics reads arrays
    results = yolo.predict(image, imgsz=IMGSZ, device="cpu", verbose=False)
    assert len(results) == 1 and results[0].boxes is not None
    metrics = yolo.val(data=str(data), imgsz=IMGSZ, batch=8, device="cpu", workers=0, plots=False, verbose=False)
    assert 0.0 <= float(metrics.box.map50) <= 1.0
    # ultralytics' exporter splits C2f's output by the block's `c`, which must follow the pruned width
    from ultralytics.nn.modules.block import C2f

    model = YOLO(str(native_of(v8))).model.float().eval()
    x = torch.randn(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)[0]
        for m in model.modules():
            if isinstance(m, C2f):
                m.forward = m.forward_split
        assert torch.equal(model(x)[0], want)


CHECK = r"""
import json, sys
sys.modules["edgeprune"] = None  # the editable install would make it importable: block it
import numpy as np, onnxruntime as ort, torch
from ultralytics import YOLO
native, onnx_path = sys.argv[1:]
model = YOLO(native).model.float().eval()
sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
feed = sess.get_inputs()[0]
x = torch.rand(*feed.shape, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    want = model(x)[0].numpy()
got = sess.run(None, {feed.name: x.numpy()})[0]
print(json.dumps({"diff": float(np.abs(got - want).max()), "scale": float(np.abs(want).max()),
                  "shapes": [list(got.shape), list(want.shape)]}))
"""


def test_checkpoint_matches_model_onnx_without_edgeprune(v8: dict[str, Any]) -> None:
    """The checkpoint needs nothing of edgeprune, and computes what model.onnx does."""
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(native_of(v8)), str(Path(v8["out"]) / "model.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["shapes"][0] == got["shapes"][1]
    # the trainer saved half-precision weights, which pruning only selects from: the fp16 checkpoint is exact
    assert got["diff"] <= 1e-4 * max(got["scale"], 1.0), got


# ---- training with ultralytics' trainer ---------------------------------------------------------------------------


def test_pruned_trainer_keeps_the_pruned_structure(v8: dict[str, Any], data: Path, tmp_path: Path) -> None:
    native = native_of(v8)
    pruned = params(YOLO(str(native)).model)
    before = {k: v.float().clone() for k, v in YOLO(str(native)).model.state_dict().items()}
    yolo = YOLO(str(native))
    yolo.train(data=str(data), project=str(tmp_path), name="first", trainer=PrunedTrainer, val=True, **TRAIN)
    assert params(yolo.model) == pruned
    weights = tmp_path / "first" / "weights"
    for name in ("best.pt", "last.pt"):
        assert params(YOLO(str(weights / name)).model) == pruned, name
    after = YOLO(str(weights / "last.pt")).model.state_dict()
    # it trained
    assert any(not torch.equal(before[k], after[k].float()) for k in before if before[k].is_floating_point())
    again = YOLO(str(weights / "best.pt"))
    again.train(data=str(data), project=str(tmp_path), name="second", trainer=PrunedTrainer, val=False, **TRAIN)
    assert params(again.model) == pruned
    assert params(YOLO(str(tmp_path / "second" / "weights" / "last.pt")).model) == pruned


def test_pruned_trainer_refuses_other_classes(v8: dict[str, Any], tmp_path: Path) -> None:
    three = write_dataset(tmp_path / "three", names=("red", "green", "blue"), n_train=2, n_val=2)
    with pytest.raises(ValueError, match="predicts 2 classes and the data has 3"):
        YOLO(str(native_of(v8))).train(
            data=str(three), project=str(tmp_path), name="nc", trainer=PrunedTrainer, **TRAIN
        )


def test_pruned_trainer_takes_the_models_task(data: Path, tmp_path: Path) -> None:
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.models.yolo.segment import SegmentationTrainer

    args = {"data": str(data), "project": str(tmp_path), "name": "t", **TRAIN}
    detect = PrunedTrainer(overrides={"task": "detect", "model": "yolov8n.yaml", **args})
    assert type(detect) is PrunedTrainer and isinstance(detect, DetectionTrainer)
    segment = PrunedTrainer(overrides={"task": "segment", "model": "yolov8n-seg.yaml", **args})
    assert isinstance(segment, SegmentationTrainer) and isinstance(segment, pruned_trainer("segment"))
    from ultralytics.nn.tasks import SegmentationModel

    model = SegmentationModel("yolov8n-seg.yaml", nc=len(NAMES), verbose=False)
    assert segment.get_model(cfg=model.yaml, weights=model, verbose=False) is model
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="no trainer for task"):
        pruned_trainer("nope")


def test_arch_name_round_trip(tmp_path: Path) -> None:
    """`--arch ultralytics:yolov8n` (random weights): the checkpoint YOLO() loads, and `edgeprune.load`
    rebuilding the same pruned model from plan.json by that name."""
    import edgeprune

    out = tmp_path / "out"
    rc, stdout, err = run_cli(
        "--arch", "ultralytics:yolov8n", "--input-shape", "1x3x32x32", "--budget", "5MFLOPs", "--out", out, *FAST
    )
    assert rc == 0 and "Traceback" not in stdout + err, err
    native = YOLO(str(out / NATIVE)).model.float().eval()
    rebuilt = edgeprune.load(out).half().float().eval()  # the checkpoint's weights are half precision
    assert params(rebuilt) == params(native) < 0.7 * params(YOLO("yolov8n.yaml").model)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), native(x)[0], atol=1e-4)


# ---- YOLO11 -------------------------------------------------------------------------------------------------------


def test_yolo11_round_trip(v11: dict[str, Any]) -> None:
    native = native_of(v11)
    assert native.is_file()
    yolo = YOLO(str(native))
    assert yolo.task == "detect" and params(yolo.model) < v11["params_before"]
    image = np.full((IMGSZ, IMGSZ, 3), 114, np.uint8)
    assert len(yolo.predict(image, imgsz=IMGSZ, device="cpu", verbose=False)) == 1


def test_label_free_recovery_from_an_image_folder(v8: dict[str, Any], data: Path, tmp_path: Path) -> None:
    """Issue 32's front: the trained checkpoint with a flat folder of its training images and no
    labels is distilled from the unpruned model by default, fidelity is its metric, and what is published
    is no worse on it than the pruned model. (This one-epoch model's outputs are its anchor grid:
    pruned, it keeps R² 0.99999 and recovery has nothing to show there, and its loss need not fall in 3
    epochs: 2.976e6, 2.956e6, 3.112e6 in one run; bench/yolo_distill.py shows recovery on a trained
    detector, 0.256 -> 0.803.)"""
    images = data.parent / "images" / "train"
    run = compressed(v8["ckpt"], tmp_path / "out", 0.5, "--data", images, "--epochs", "3", "--batch-size", "4")
    assert run["rc"] == 0, run["err"][-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["recovery"]["method"] == "distill" and report["data"]["labelled"] is False
    accuracy = report["accuracy"]
    assert accuracy["metric"] == "fidelity" and accuracy["higher_is_better"]
    assert 0 < accuracy["pruned"] <= 1 and 0 < accuracy["recovered"] <= 1, accuracy
    losses = [h["loss"] for h in report["recovery"]["history"]]
    assert 1 <= len(losses) <= 3 and all(np.isfinite(losses)), losses
    kept = report["recovery"]["kept"]  # the best epoch on the held-out split, the pruned weights (0) included
    assert accuracy["recovered"] == kept["metric"] >= accuracy["pruned"] and 0 <= kept["epoch"] <= len(losses)
    assert (tmp_path / "out" / NATIVE).is_file()


def test_map_by_ultralytics_validator_inside_the_run(v8: dict[str, Any], data: Path, tmp_path: Path) -> None:
    """A dataset yaml as --data: recovery reads its training images (no labels), and the run reports
    mAP50-95 by ultralytics' own validator on its val split for the baseline (the same figure
    YOLO(ckpt).val gives at the pruned size), the pruned and the recovered model, and, in int8, for
    the published model on the runtime; --max-accuracy-drop applies to it."""
    out = tmp_path / "out"
    run = compressed(
        v8["ckpt"], out, 0.5, "--data", data, "--epochs", "1", "--batch-size", "4", "--max-accuracy-drop", "1"
    )
    assert run["rc"] == 0, run["err"][-3000:]
    report = json.loads((out / "report.json").read_text())
    accuracy = report["accuracy"]
    assert accuracy["metric"] == "mAP50-95" and "ultralytics' detect validator" in accuracy["about"], accuracy
    assert report["data"]["source"].endswith("images/train") and report["data"]["labelled"] is False
    own = YOLO(str(v8["ckpt"])).val(
        data=str(data), imgsz=IMGSZ, batch=16, conf=0.001, iou=0.7, rect=False, plots=False, device="cpu"
    )
    assert accuracy["baseline"] == pytest.approx(float(own.box.map), abs=1e-6)
    assert 0 <= accuracy["pruned"] <= accuracy["recovered"] <= 1  # the best epoch kept, the pruned one included
    assert report["runtime_accuracy"]["metric"] == "mAP50-95"  # --max-accuracy-drop measured it on ort-cpu
    # int8: the published file's mAP on the runtime, through the validator too
    int8 = compressed(v8["ckpt"], tmp_path / "int8", 0.5, "--data", data, "--recover", "none", "--precision", "int8")
    assert int8["rc"] in (0, 1), int8["err"][-3000:]
    ra = json.loads((tmp_path / "int8" / "report.json").read_text())["runtime_accuracy"]
    assert ra["metric"] == "mAP50-95" and 0 <= ra["runtime"] <= 1 and ra["images"] > 0


def test_metric_ultralytics_needs_a_yaml(v8: dict[str, Any], data: Path, tmp_path: Path) -> None:
    images = data.parent / "images" / "train"
    rc, _, err = run_cli(v8["ckpt"], "--budget", "50%", "--data", images, "--metric", "ultralytics", "--out", tmp_path)
    line = err.strip().splitlines()[-1]
    assert rc == 2 and "--metric ultralytics validates on a dataset yaml" in line
