"""ultralytics: in, the checkpoint its trainer saves (`best.pt`, `last.pt`, `yolov8n.pt`: a dict whose
'model' or 'ema' is a DetectionModel in half precision); out, `model_ultralytics.pt`, the same kind of
checkpoint holding the pruned model, which `YOLO(path)` loads, predicts and validates with.

Training it needs `PrunedTrainer`: ultralytics' `Model.train()` asks the trainer for a model built from
the checkpoint's yaml (full width) and copies in only the weights whose shapes match, which silently
undoes a pruning. `PrunedTrainer` trains the pruned module itself, for any task (detect, segment,
pose, obb, classify), and the best.pt / last.pt it writes hold the pruned structure again:

    from edgeprune.ecosystems.ultralytics import PrunedTrainer
    YOLO("out/model_ultralytics.pt").train(data="my.yaml", epochs=10, trainer=PrunedTrainer)

Its metric: `--metric ultralytics`, or a dataset yaml given as `--data` (`data.yaml`: the recovery
then reads its training images, without labels), reports mAP50-95 of the baseline, the pruned and
the recovered model, and of the published one on the runtime, by ultralytics' own validator on the
yaml's val split (`UltralyticsMap`); recovery keeps its best epoch and --max-accuracy-drop applies
on it.

ultralytics is imported only when such a model arrives (or a trainer is asked for), never at import.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from edgeprune.ecosystems._ultralytics_map import VALIDATORS, UltralyticsMap, dataset_of, is_ultralytics, is_yaml
from edgeprune.ecosystems.base import Ecosystem, Preprocess, register
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.pipeline.loaded import from_module

#: ultralytics' default training size, when a checkpoint records none
DEFAULT_IMGSZ = 640
#: what the README shows, and report.json repeats
TRAIN_RECIPE = (
    "from edgeprune.ecosystems.ultralytics import PrunedTrainer; "
    "YOLO('{path}').train(data='your.yaml', epochs=10, trainer=PrunedTrainer)"
)
#: the trainer of each task; PrunedTrainer picks one by the task ultralytics passes it
TASK_TRAINERS = {
    "detect": ("ultralytics.models.yolo.detect", "DetectionTrainer"),
    "segment": ("ultralytics.models.yolo.segment", "SegmentationTrainer"),
    "pose": ("ultralytics.models.yolo.pose", "PoseTrainer"),
    "obb": ("ultralytics.models.yolo.obb", "OBBTrainer"),
    "classify": ("ultralytics.models.yolo.classify", "ClassificationTrainer"),
}


def _checkpoint_module(obj: Mapping[str, Any]) -> nn.Module | None:
    """What ultralytics itself loads from a checkpoint: the EMA where there is one, else the model."""
    for key in ("ema", "model"):
        if isinstance(obj.get(key), nn.Module):
            return obj[key]
    return None


def _classes(model: nn.Module) -> int | None:
    """The classes the model predicts: `nc` as the trainer sets it, else its yaml's."""
    nc = getattr(model, "nc", None)
    if not isinstance(nc, int):
        nc = (getattr(model, "yaml", None) or {}).get("nc")
    return nc if isinstance(nc, int) else None


def _looks_ultralytics(obj: Mapping[str, Any]) -> bool:
    """A dict with ultralytics' stamp (its docs / license name ultralytics) or its training arguments."""
    stamp = " ".join(str(obj.get(k, "")) for k in ("docs", "license")).lower()
    args = obj.get("train_args")
    return "ultralytics" in stamp or (isinstance(args, Mapping) and {"task", "imgsz"} <= set(args))


@register
class Ultralytics(Ecosystem):
    name: ClassVar[str] = "ultralytics"
    extra: ClassVar[str] = "ultralytics"
    packages: ClassVar[tuple[str, ...]] = ("ultralytics",)
    output: ClassVar[str | None] = "model_ultralytics.pt"

    @classmethod
    def claims_object(cls, obj: Any) -> bool:
        if is_ultralytics(obj) and type(obj).__module__ == "ultralytics.nn.tasks":  # torch.save(yolo.model)
            return True
        if not isinstance(obj, Mapping):
            return False
        module = _checkpoint_module(obj)
        if module is not None:
            return is_ultralytics(module)
        if _looks_ultralytics(obj):
            held = ", ".join(f"{k}: {type(obj[k]).__name__}" for k in ("model", "ema") if k in obj) or "neither key"
            raise EdgepruneError(
                f"this ultralytics checkpoint holds no model under 'model' or 'ema' ({held}): a stripped or "
                "state-dict-only file; pass the best.pt or last.pt ultralytics' trainer wrote, or save one "
                "with YOLO(...).save('model.pt')"
            )
        return False

    def build(self, arch: str, num_classes: int | None) -> nn.Module:
        """`--arch ultralytics:yolov8n` (or `:yolo11n-seg.yaml`): the model its yaml builds, random weights."""
        from ultralytics import YOLO

        name = arch.partition(":")[2]
        cfg = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
        try:
            model = YOLO(cfg).model
        except Exception as err:  # noqa: BLE001 - ultralytics' own refusal: one line
            raise EdgepruneError(
                f"--arch {arch}: ultralytics cannot build {cfg} ({type(err).__name__}: {first_line(err)}); "
                "name a model yaml ultralytics ships, e.g. ultralytics:yolov8n or ultralytics:yolo11n"
            ) from None
        if num_classes is not None and num_classes != _classes(model):
            raise EdgepruneError(f"--arch {arch}: --num-classes is not supported for ultralytics models; leave it out")
        set_export(model, True)  # as load() has it, so plan.json applies to a rebuilt one (edgeprune.load)
        return model

    def load(
        self,
        path: Path | None,
        obj: Any,
        arch: str | None,
        input_shape: tuple[int, ...] | None,
        num_classes: int | None,
    ) -> Any:
        import ultralytics
        from ultralytics.nn.tasks import guess_model_task

        ckpt: Mapping[str, Any] = {}
        model: nn.Module | None
        if obj is None:  # --arch ultralytics:NAME, random weights: plan.json rebuilds it from that name
            if path is not None:
                raise EdgepruneError(
                    f"{path}: an ultralytics checkpoint carries its own architecture; pass it without --arch"
                )
            assert arch is not None
            model, source = self.build(arch, num_classes), f"{arch} (random weights)"
        else:  # a checkpoint, or a module saved whole: the file is the architecture
            model = obj if isinstance(obj, nn.Module) else _checkpoint_module(obj)
            assert model is not None  # claims_object refused the others
            ckpt, arch, source = ({} if isinstance(obj, nn.Module) else obj), None, str(path)
        train_args = _json_safe(dict(ckpt.get("train_args") or getattr(model, "args", None) or {}))
        h, w = _imgsz(train_args.get("imgsz", DEFAULT_IMGSZ))
        model = model.float().cpu().eval()
        set_export(model, True)
        loaded = from_module(
            model, input_shape=input_shape or (1, 3, h, w), arch=arch, num_classes=_classes(model), source=source
        )
        h, w = loaded.input_shape[-2:]  # --input-shape, where given, is the size the model is pruned and shipped at
        task = getattr(model, "task", None) or train_args.get("task") or guess_model_task(model)
        names = getattr(model, "names", None)
        native = {
            "train_args": train_args,
            "task": task,
            "names": {str(k): str(v) for k, v in names.items()} if isinstance(names, Mapping) else None,
            "version": str(ckpt.get("version") or ultralytics.__version__),
            "date": str(ckpt["date"]) if ckpt.get("date") else None,
        }
        pre = Preprocess(
            size=(h, w), mean=None, std=None, source="ultralytics: letterbox to imgsz, RGB scaled to [0, 1]"
        )
        return dataclasses.replace(loaded, ecosystem=self.name, native=native, input_names=("images",), preprocess=pre)

    def save(self, pruned: nn.Module, loaded: Any, plan: Any, dest: Path) -> dict[str, Any]:
        """A checkpoint as ultralytics' trainer finalises one (engine/trainer.py `save_model`, then
        utils/torch_utils.py `strip_optimizer`): the model in half precision, frozen, no optimizer."""
        import ultralytics

        native = loaded.native
        # as ultralytics' EMA is (the pipeline may hand it over mid-training)
        model = copy.deepcopy(pruned).cpu().eval()
        set_export(model, False)
        resync(model)
        train_args = dict(native.get("train_args") or {})
        if native.get("task"):
            train_args.setdefault("task", native["task"])
            model.task = native["task"]
        # torch types a module's attributes as tensors and modules; ultralytics keeps others on its models
        if hasattr(model, "args"):
            model.args = dict(train_args)  # type: ignore[assignment]
        if hasattr(model, "criterion"):
            model.criterion = None  # type: ignore[assignment]  # the loss is rebuilt by the trainer for the current data
        model.half().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # torch's stub lacks it
        for p in model.parameters():
            p.requires_grad = False
        params = sum(p.numel() for p in model.parameters())
        before = sum(p.numel() for p in loaded.model.parameters())
        ckpt = {
            "date": datetime.datetime.now().astimezone().isoformat(),
            "version": ultralytics.__version__,
            "license": "AGPL-3.0 License (https://ultralytics.com/license)",
            "docs": "https://docs.ultralytics.com",
            "epoch": -1,  # finished, not resumable: ultralytics starts a new training from it
            "best_fitness": None,
            "model": model,
            "ema": None,
            "updates": None,
            "optimizer": None,
            "scaler": None,
            "train_args": train_args,
            "edgeprune": {
                "pruned_from": loaded.source,
                "params": params,
                "params_before": before,
                "train": TRAIN_RECIPE.format(path=dest.name),
            },
        }
        torch.save(ckpt, dest)
        return {
            "format": "ultralytics checkpoint",
            "load": f"YOLO('{dest.name}')",
            "train": TRAIN_RECIPE.format(path=dest.name),
            "params": params,
            "params_before": before,
        }

    def data_source(self, data: str) -> str:
        """A dataset yaml's training images (a folder: label-free recovery reads them, labels unread)."""
        if not is_yaml(data):
            return data
        train = dataset_of(data)["train"]
        folder = Path(train[0] if isinstance(train, list) else train)
        if not folder.is_dir():
            raise EdgepruneError(
                f"--data {data}: its train split {folder} is not a folder of images (a list file?); "
                "pass the folder of training images as --data and the yaml as --metric ultralytics:DATA.yaml"
            )
        return str(folder)

    def metric(self, name: str | None, data: str | None, loaded: Any) -> UltralyticsMap | None:
        """`--metric ultralytics` (the dataset --data names) or `ultralytics:DATA.yaml`, or --data a yaml."""
        if name is None and data is not None and is_yaml(data):
            yaml = data
        elif name is not None and name.partition(":")[0] == "ultralytics":
            yaml = name.partition(":")[2] or (data or "")
            if not is_yaml(yaml):
                raise EdgepruneError(
                    "--metric ultralytics validates on a dataset yaml: pass it as --data data.yaml, or as "
                    "--metric ultralytics:data.yaml beside --data IMAGES"
                )
        else:
            return None
        task = loaded.native.get("task") or "detect"
        if task not in VALIDATORS:
            raise EdgepruneError(
                f"--metric ultralytics measures box mAP (detect, segment, pose, obb); this model's task is {task}"
            )
        dataset_of(yaml)  # a yaml ultralytics cannot read is refused now, not after the search
        names = {int(k): v for k, v in (loaded.native.get("names") or {}).items()}
        stride = getattr(loaded.model, "stride", torch.tensor([32.0]))
        return UltralyticsMap(yaml, tuple(loaded.input_shape[-2:]), task, names, stride)


def set_export(model: nn.Module, on: bool) -> None:
    """ultralytics' heads in export mode return their predictions alone, as its own ONNX export does,
    not beside the raw per-level maps and the features they came from; those extra outputs would
    make the layers feeding the head unprunable (their channels would be the model's outputs).
    Off again (the class's default) in the checkpoint written back, as ultralytics expects."""
    for m in model.modules():
        if type(m).__module__.startswith("ultralytics") and isinstance(getattr(type(m), "export", None), bool):
            if on:
                m.export = True  # type: ignore[assignment]  # a bool (torch types module attributes as tensors)
            else:
                m.__dict__.pop("export", None)


def resync(model: nn.Module) -> None:
    """Set the width attributes ultralytics' blocks read besides their layers to the pruned widths:
    C2f / C3k2 / ELAN blocks keep `c`, half of cv1's output, which the exporter's `forward_split`
    (ONNX, TensorRT, ...) splits by, where `forward` chunks in two."""
    for m in model.modules():
        cv1 = getattr(m, "cv1", None)
        conv = getattr(cv1, "conv", None)
        if hasattr(m, "forward_split") and isinstance(getattr(m, "c", None), int) and isinstance(conv, nn.Conv2d):
            m.c = conv.out_channels // 2  # type: ignore[assignment]  # an int (torch types module attributes as tensors)


def _imgsz(value: Any) -> tuple[int, int]:
    """ultralytics' imgsz: an int (square) or [h, w]."""
    try:
        if isinstance(value, (list, tuple)):
            h, w = (int(value[0]), int(value[-1])) if value else (DEFAULT_IMGSZ, DEFAULT_IMGSZ)
        else:
            h = w = int(value)
    except (TypeError, ValueError):
        h = w = DEFAULT_IMGSZ
    return (h, w) if h > 0 and w > 0 else (DEFAULT_IMGSZ, DEFAULT_IMGSZ)


def _json_safe(value: Any) -> Any:
    """train_args as JSON: paths and other objects as text, tuples as lists, NaN as None."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


# ---- training the pruned model with ultralytics' own trainers ---------------------------------------------------


def _same_classes(model: nn.Module, data: Mapping[str, Any]) -> None:
    """The pruned head keeps the classes it was trained on; other data needs a model trained on it."""
    nc, want = _classes(model), data.get("nc")
    if nc is not None and want is not None and int(nc) != int(want):
        raise ValueError(
            f"this pruned model predicts {nc} classes and the data has {want}: PrunedTrainer keeps the pruned "
            "model as it is, head included; train the unpruned model on this data first, then prune it"
        )


class _KeepsPrunedModel:
    """Mixin for an ultralytics trainer: `get_model` returns the model it is given (the pruned one,
    trainable) instead of building the yaml's full-width model and copying the matching weights in."""

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        if isinstance(weights, Mapping):  # a checkpoint dict
            weights = _checkpoint_module(weights)
        if not isinstance(weights, nn.Module):  # nothing pruned to keep (a yaml, pretrained=False): ultralytics' own
            from ultralytics.utils import LOGGER

            LOGGER.warning(
                "PrunedTrainer: no model given, building the full-width model from the yaml; pass a pruned "
                "checkpoint with pretrained=True to train it as pruned"
            )
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)  # type: ignore[misc]
        from ultralytics.utils import RANK

        model = weights.float()
        _same_classes(model, getattr(self, "data", None) or {})
        names = (getattr(self, "data", None) or {}).get("names")
        if names and getattr(getattr(self, "args", None), "cls_remap", True):
            model.names = names
        for p in model.parameters():
            if p.dtype.is_floating_point:
                p.requires_grad_(True)
        if verbose and RANK == -1 and hasattr(model, "info"):
            model.info()  # type: ignore[operator]  # ultralytics' model summary (untyped here)
        return model


@functools.cache
def pruned_trainer(task: str = "detect") -> type:
    """ultralytics' trainer for `task`, training the pruned model it is given as it is."""
    import importlib

    if task not in TASK_TRAINERS:
        raise ValueError(f"PrunedTrainer: no trainer for task {task!r}; one of {', '.join(TASK_TRAINERS)}")
    module, name = TASK_TRAINERS[task]
    try:
        base = getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise ImportError(
            f"PrunedTrainer needs ultralytics ({first_line(err)}); pip install 'edgeprune[ultralytics]'"
        ) from None
    return type(
        f"Pruned{name}", (_KeepsPrunedModel, base), {"__module__": __name__, "__doc__": _KeepsPrunedModel.__doc__}
    )


@functools.cache
def _pruned_trainer_class() -> type:
    """`PrunedTrainer`: the detection trainer, which hands any other task to that task's pruned trainer
    (`Model.train` passes the task in `overrides`), so one name serves every model."""
    base = pruned_trainer("detect")

    def __new__(cls: type, cfg: Any = None, overrides: Mapping[str, Any] | None = None, _callbacks: Any = None) -> Any:
        task = (overrides or {}).get("task") or "detect"
        if cls.__dict__.get("_by_task") and task != "detect":  # PrunedTrainer itself, not a user's subclass
            from ultralytics.cfg import DEFAULT_CFG

            return pruned_trainer(task)(cfg if cfg is not None else DEFAULT_CFG, overrides, _callbacks)
        return object.__new__(cls)

    return type(
        "PrunedTrainer",
        (base,),
        {
            "__module__": __name__,
            "__new__": __new__,
            "_by_task": True,
            "__doc__": "ultralytics' trainer for the model's task, training the pruned "
            "model as it is (edgeprune.ecosystems.ultralytics).",
        },
    )


def __getattr__(name: str) -> Any:
    """`PrunedTrainer` (and each task's `PrunedSegmentationTrainer`, ...) is made on first use, so this
    module imports without ultralytics; importable by name, as ultralytics' DDP launcher re-imports it."""
    if name == "PrunedTrainer":
        return _pruned_trainer_class()
    for task, (_, trainer) in TASK_TRAINERS.items():
        if name == f"Pruned{trainer}":
            return pruned_trainer(task)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
