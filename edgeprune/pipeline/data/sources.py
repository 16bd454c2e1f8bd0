"""Where `--data` comes from: an .npz archive, an image folder, or a user function.

- ``data.npz`` with ``x_train, y_train, x_test, y_test`` (uint8 NHWC images or float arrays);
- a folder ``train/<class>/*.png|jpg`` and ``val/<class>/...`` (``test/`` also accepted), decoded
  with Pillow;
- ``package.module:function`` returning ``(train_loader, val_loader)``: any iterables of
  ``(inputs, labels)`` batches, used as they are (the escape hatch for data we do not know).
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.pipeline.data.arrays import BatchLoader, ImageArrays, Normalization, to_float01

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclasses.dataclass
class DataBundle:
    train: Iterable[Any]
    val: Iterable[Any]
    num_classes: int | None
    input_shape: tuple[int, ...] | None  # (C, H, W) of one image, when known
    source: str
    normalization: Normalization | None = None
    train_arrays: ImageArrays | None = None  # kept for DDP re-sharding and calibration batches

    def calibration(self, n: int = 256, seed: int = 0) -> torch.Tensor:
        """`n` training inputs without augmentation, for methods that reconstruct layer outputs."""
        if self.train_arrays is not None and self.normalization is not None:
            idx = torch.randperm(len(self.train_arrays.labels), generator=torch.Generator().manual_seed(seed))[:n]
            return self.normalization(to_float01(self.train_arrays.images[idx]))
        batches, have = [], 0
        for x, _ in self.train:  # a user's loader: take its first batches as they come
            batches.append(x)
            have += len(x)
            if have >= n:
                break
        if not batches:
            raise EdgepruneError(f"--data {self.source} gave no training batch to calibrate on")
        return torch.cat(batches)[:n]

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "normalization": dataclasses.asdict(self.normalization) if self.normalization else None,
        }


def load_data(
    spec: str, batch_size: int = 128, eval_batch_size: int = 500, augment: bool = True, seed: int = 0,
    num_replicas: int = 1, rank: int = 0, limit_train: int | None = None,
) -> DataBundle:
    """Resolve `--data SPEC` into train and validation loaders."""
    path = Path(spec)
    if path.suffix == ".npz":
        train, val = _npz(path)
    elif path.is_dir():
        train, val = _folder(path)
    elif ":" in spec and not path.exists():
        return _custom(spec)
    else:
        raise EdgepruneError(f"--data {spec}: no such .npz file or image folder; pass data.npz, a folder with train/ and val/, or module:function")
    if limit_train is not None and limit_train < len(train.labels):
        train = ImageArrays(train.images[:limit_train], train.labels[:limit_train], train.class_names)
    mean, std = train.channel_stats()
    norm = Normalization(mean, std)
    # random crop + flip is the standard augmentation for small natural images (CIFAR-style)
    small = train.images.shape[-1] <= 64
    return DataBundle(
        train=BatchLoader(train, batch_size, norm, shuffle=True, augment=augment and small, seed=seed, num_replicas=num_replicas, rank=rank),
        val=BatchLoader(val, eval_batch_size, norm),
        num_classes=max(train.num_classes, val.num_classes),
        input_shape=tuple(train.images.shape[1:]),
        source=spec,
        normalization=norm,
        train_arrays=train,
    )


def _npz(path: Path) -> tuple[ImageArrays, ImageArrays]:
    if not path.is_file():
        raise EdgepruneError(f"--data {path} does not exist; pass the path of an .npz with x_train, y_train, x_test, y_test")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - zip/format errors all mean "unreadable"
        raise EdgepruneError(f"cannot read {path}: {first_line(err)}; write it with numpy.savez") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
    if missing:
        raise EdgepruneError(f"{path} lacks arrays {', '.join(missing)}; it needs x_train, y_train, x_test, y_test (found {', '.join(z.files)})")
    arrays = {k: _array(z, k, path) for k in ("x_train", "y_train", "x_test", "y_test", "class_names") if k in z.files}
    names = tuple(arrays["class_names"]) if "class_names" in arrays else ()
    src = str(path)
    return (ImageArrays.from_numpy(arrays["x_train"], arrays["y_train"], names, src),
            ImageArrays.from_numpy(arrays["x_test"], arrays["y_test"], names, src))


def _array(z: Any, key: str, path: Path) -> np.ndarray:
    """One array of an .npz; object arrays (pickled Python objects) are refused, never unpickled."""
    try:
        return z[key]
    except ValueError as err:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        raise EdgepruneError(f"{path}: array {key} holds Python objects ({first_line(err)}); "
                             "save numeric arrays (uint8 or float images, integer labels) with numpy.savez") from None
    except Exception as err:  # noqa: BLE001 - a truncated or corrupt member
        raise EdgepruneError(f"cannot read array {key} of {path}: {first_line(err)}; write the file again with numpy.savez") from None


def _folder(root: Path) -> tuple[ImageArrays, ImageArrays]:
    val_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or val_dir is None:
        raise EdgepruneError(f"--data {root}: an image folder needs train/<class>/ and val/<class>/ subfolders")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if not classes:
        raise EdgepruneError(f"{root / 'train'} has no class folders; put images in train/<class>/")
    return _read_split(root / "train", classes), _read_split(val_dir, classes)


def _read_split(split: Path, classes: Sequence[str]) -> ImageArrays:
    from PIL import Image

    images, labels, size = [], [], None
    extra = sorted(d.name for d in split.iterdir() if d.is_dir() and d.name not in classes)
    if extra:
        raise EdgepruneError(f"{split} has class folders {', '.join(extra)} that train/ lacks; both splits need the same classes")
    for label, cls in enumerate(classes):
        folder = split / cls
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) if folder.is_dir() else []
        for f in files:
            try:
                with Image.open(f) as im:
                    img = im.convert("RGB")
                    if size is None:
                        size = img.size
                    elif img.size != size:
                        img = img.resize(size, Image.BILINEAR)
                    images.append(np.asarray(img, dtype=np.uint8))
            except OSError as err:
                raise EdgepruneError(f"cannot decode image {f}: {first_line(err)}; remove or replace it") from None
            labels.append(label)
    if not images:
        raise EdgepruneError(f"{split} holds no images (.png, .jpg, .jpeg, .bmp, .webp) in its class folders")
    return ImageArrays.from_numpy(np.stack(images), np.asarray(labels), tuple(classes), str(split))


def _custom(spec: str) -> DataBundle:
    mod_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError, ValueError, TypeError) as err:  # ValueError: ":fn"; TypeError: ".relative:fn"
        raise EdgepruneError(f"cannot import --data {spec} ({first_line(err)}); name a function returning (train_loader, val_loader)") from None
    result = fn()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise EdgepruneError(f"--data {spec} must return (train_loader, val_loader), got {type(result).__name__}")
    train, val = result
    return DataBundle(train=train, val=val, num_classes=None, input_shape=None, source=spec)


def check_fits(bundle: DataBundle, num_outputs: int, input_shape: Sequence[int]) -> None:
    """Refuse data whose labels or image size do not fit the model, before any training starts."""
    if bundle.num_classes is not None and bundle.num_classes > num_outputs:
        raise EdgepruneError(
            f"the data has {bundle.num_classes} classes but the model outputs {num_outputs}; "
            "use a model with as many outputs (--num-classes) or data with matching labels"
        )
    if bundle.input_shape is not None and tuple(bundle.input_shape) != tuple(input_shape[1:]):
        shape = "x".join(map(str, bundle.input_shape))
        raise EdgepruneError(
            f"the data's images are {shape} but the model's input shape is {'x'.join(map(str, input_shape))}; "
            f"pass --input-shape 1x{shape} or resize the data"
        )
