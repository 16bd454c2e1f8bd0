"""ultralytics' own metric inside a run (`--metric ultralytics[:data.yaml]`, or a dataset yaml as
--data): mAP50-95 by its validator, on PyTorch models and on runtime sessions alike."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from edgeprune.errors import EdgepruneError, first_line

#: the validator of each task whose metric is box mAP
VALIDATORS = {
    "detect": ("ultralytics.models.yolo.detect", "DetectionValidator"),
    "segment": ("ultralytics.models.yolo.segment", "SegmentationValidator"),
    "pose": ("ultralytics.models.yolo.pose", "PoseValidator"),
    "obb": ("ultralytics.models.yolo.obb", "OBBValidator"),
}


class UltralyticsMap:
    """mAP50-95 by ultralytics' own validator on a dataset yaml's val split, with its `val` defaults
    (conf 0.001, IoU 0.7), letterboxed to the size the model is pruned at. A `Metric`: the loader
    the pipeline passes is not read (the validator reads the split, with its labels). A PyTorch
    model is validated as it is (the validator fuses and freezes a copy of its own); a runtime's
    session (measure.RuntimeModel: int8 on ort-cpu) through `_Session`, so the published file's mAP
    is measured too."""

    name = "mAP50-95"
    higher_is_better = True

    def __init__(self, yaml: str, imgsz: tuple[int, ...], task: str, names: dict[int, str], stride: Any) -> None:
        self.yaml, self.imgsz, self.task, self.names, self.stride = yaml, list(imgsz), task, names, stride
        self.describe = (
            f"mAP50-95 by ultralytics' {task} validator on {yaml}'s val split (conf 0.001, IoU 0.7, "
            f"{'x'.join(map(str, imgsz))})"
        )

    def __call__(self, model: nn.Module, loader: Iterable[Any]) -> float:
        import importlib

        module, cls = VALIDATORS[self.task]
        validate = getattr(importlib.import_module(module), cls)
        subject = model if is_ultralytics(model) else _Session(model, self.stride, self.names)
        with tempfile.TemporaryDirectory() as tmp:
            args = {
                "task": self.task,
                "data": self.yaml,
                "imgsz": self.imgsz,
                "batch": 16,
                "conf": 0.001,
                "iou": 0.7,
                "device": "cpu",
                "half": False,
                "rect": False,  # the size the model is pruned (and exported) at, as a session requires
                "plots": False,
                "save_json": False,
                "verbose": False,
                "workers": 0,
                "project": tmp,
                "name": "val",
                "exist_ok": True,
            }
            threads = torch.get_num_threads()  # its select_device resets PyTorch's threads to the machine's
            try:
                stats = validate(args=args)(model=subject)
            finally:
                torch.set_num_threads(threads)
        return float(stats["metrics/mAP50-95(B)"])


class _Session(nn.Module):
    """A runtime's session dressed as an ultralytics model for its validator: the stride and class
    names its letterbox and NMS read, and a forward that returns the session's predictions."""

    def __init__(self, session: nn.Module, stride: Any, names: dict[int, str]) -> None:
        super().__init__()
        self.session, self.names = session, names
        self.register_buffer("stride", torch.as_tensor(stride, dtype=torch.float32))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.session(x)

    def __deepcopy__(self, memo: dict[int, Any]) -> _Session:
        """Itself: the validator copies what it validates, and a runtime's session cannot be copied
        (nor needs to be: validating only reads it)."""
        return self


def is_yaml(path: str) -> bool:
    return path.lower().endswith((".yaml", ".yml"))


def dataset_of(yaml: str) -> dict[str, Any]:
    """ultralytics' own reading of a dataset yaml (paths resolved), or one line when it cannot."""
    from ultralytics.data.utils import check_det_dataset

    try:
        return check_det_dataset(yaml, autodownload=False)
    except Exception as err:  # noqa: BLE001 - ultralytics raises assorted types for a yaml it cannot use
        raise EdgepruneError(
            f"ultralytics cannot read the dataset {yaml} ({type(err).__name__}: {first_line(err)}); "
            "pass a data.yaml with train and val image folders"
        ) from None


def is_ultralytics(m: Any) -> bool:
    return isinstance(m, nn.Module) and type(m).__module__.startswith("ultralytics")
