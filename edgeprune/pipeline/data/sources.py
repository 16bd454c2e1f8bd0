"""Where `--data` comes from: an .npz or .pt archive, an image folder, or a user function.

Labelled (fine-tuning, distillation with the task loss, top-1):
- ``data.npz`` with ``x_train, y_train, x_test, y_test`` (uint8 NHWC images or float arrays);
- a folder ``train/<class>/*.png|jpg`` and ``val/<class>/...`` (``test/`` also accepted), decoded
  with Pillow;
Unlabelled (distillation from the unpruned model, fidelity as the metric), labels optional:
- a flat folder of images (any sizes and modes, searched recursively), converted to RGB and resized
  and centre-cropped to the model's input;
- an ``.npz`` or ``.pt`` of input arrays keyed by the model's input names (``input_ids``,
  ``attention_mask``, ``pixel_values``), or one array ``x``; ``y`` / ``labels`` when labelled; an
  input the file lacks is the example input's (an attention mask of ones);
- ``package.module:function`` returning ``(train_loader, val_loader)``: any iterables of
  ``(inputs, labels)`` batches (labels may be None), or of inputs alone, used as they are.
Images are normalised with the model's own mean/std where its ecosystem records them
(ecosystems/), else with the training split's channel statistics; a held-out split is taken from
unlabelled data (`HELD_OUT`), and `describe()` says which of these applied.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeprune import modelrun
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.pipeline.data.arrays import (
    BatchLoader,
    ImageArrays,
    Normalization,
    TensorLoader,
    held_out,
    to_float01,
)

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """What the data must fit: the model's example inputs (shapes, dtypes), their argument names,
    and its own image preprocessing (ecosystems/base.Preprocess) where recorded."""

    example: tuple[torch.Tensor, ...]
    names: tuple[str, ...] = ()
    preprocess: Any = None  # ecosystems.base.Preprocess

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the model's one image input, None when its input is not an image."""
        if self.preprocess is not None:
            return tuple(self.preprocess.size)
        x = self.example[0]
        return (
            (int(x.shape[-2]), int(x.shape[-1]))
            if len(self.example) == 1 and x.ndim == 4 and x.is_floating_point()
            else None
        )


@dataclasses.dataclass
class DataBundle:
    train: Iterable[Any]
    val: Iterable[Any]
    num_classes: int | None
    input_shape: tuple[int, ...] | None  # (C, H, W) of one image, when known
    source: str
    normalization: Normalization | None = None
    train_arrays: ImageArrays | None = None  # kept for DDP re-sharding and calibration batches
    labelled: bool = True
    #: how the data was prepared, for the report: normalisation's origin, resizing, the held-out split
    notes: dict[str, str] = dataclasses.field(default_factory=dict)

    def calibration(self, n: int = 256, seed: int = 0) -> Any:
        """`n` training inputs without augmentation, for methods that reconstruct layer outputs: a
        tensor, or a tuple of tensors for a model with several inputs."""
        if self.train_arrays is not None and self.normalization is not None:
            idx = torch.randperm(len(self.train_arrays), generator=torch.Generator().manual_seed(seed))[:n]
            return self.normalization(to_float01(self.train_arrays.images[idx]))
        batches, have = [], 0
        for x, _ in self.train:  # a user's loader: take its first batches as they come
            batches.append(x)
            have += modelrun.batch_len(x)
            if have >= n:
                break
        if not batches:
            raise EdgepruneError(f"--data {self.source} gave no training batch to calibrate on")
        if isinstance(batches[0], (tuple, list)):
            return tuple(torch.cat(parts)[:n] for parts in zip(*batches))
        return torch.cat(batches)[:n]

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "normalization": dataclasses.asdict(self.normalization) if self.normalization else None,
            "labelled": self.labelled,
            **self.notes,
        }


def load_data(
    spec: str,
    batch_size: int = 128,
    eval_batch_size: int = 500,
    augment: bool = True,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    limit_train: int | None = None,
    model: ModelInputs | None = None,
) -> DataBundle:
    """Resolve `--data SPEC` into train and validation loaders, fitted to `model`'s inputs when given."""
    path = Path(spec)
    notes: dict[str, str] = {}
    if path.suffix in (".npz", ".pt") and path.is_file() and not _is_split_npz(path):
        return _named(path, batch_size, eval_batch_size, seed, model)
    if path.suffix == ".npz":
        train, val = _npz(path)
    elif path.is_dir() and (path / "train").is_dir():
        train, val = _folder(path, model.image_size if model else None)
    elif path.is_dir():
        train, val, notes = _flat_folder(path, model, seed)
    elif ":" in spec and not path.exists():
        return _custom(spec)
    else:
        raise EdgepruneError(
            f"--data {spec}: no such .npz/.pt file or image folder; pass data.npz, a folder of images "
            "(or one with train/ and val/), inputs.npz keyed by input name, or module:function"
        )
    if limit_train is not None and limit_train < len(train):
        train = train.subset(torch.arange(limit_train))
    norm, notes["normalization_from"] = _normalization(train, model)
    # random crop + flip is the standard augmentation for small natural images (CIFAR-style)
    small = train.images.shape[-1] <= 64
    classes = [c for c in (train.num_classes, val.num_classes) if c is not None]
    return DataBundle(
        train=BatchLoader(
            train,
            batch_size,
            norm,
            shuffle=True,
            augment=augment and small,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
        ),
        val=BatchLoader(val, eval_batch_size, norm),
        num_classes=max(classes) if classes else None,
        input_shape=tuple(train.images.shape[1:]),
        source=spec,
        normalization=norm,
        train_arrays=train,
        labelled=train.labels is not None,
        notes=notes,
    )


def _normalization(train: ImageArrays, model: ModelInputs | None) -> tuple[Normalization, str]:
    """The model's own mean/std where its ecosystem records them, else the training split's."""
    pre = model.preprocess if model is not None else None
    if pre is not None:
        channels = int(train.images.shape[1])
        mean = list(pre.mean) if pre.mean is not None else [0.0] * channels
        std = list(pre.std) if pre.std is not None else [1.0] * channels
        return Normalization(mean, std), pre.source
    mean, std = train.channel_stats()
    return Normalization(mean, std), "the training images' own channel statistics"


def _is_split_npz(path: Path) -> bool:
    """An .npz with x_train/x_test (the labelled layout) rather than arrays keyed by input name."""
    if path.suffix != ".npz":
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return "x_train" in z.files or "x_test" in z.files
    except Exception:  # noqa: BLE001 - unreadable: _npz says so in one line
        return True


def _npz(path: Path) -> tuple[ImageArrays, ImageArrays]:
    if not path.is_file():
        raise EdgepruneError(
            f"--data {path} does not exist; pass the path of an .npz with x_train, y_train, x_test, y_test"
        )
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - zip/format errors all mean "unreadable"
        raise EdgepruneError(f"cannot read {path}: {first_line(err)}; write it with numpy.savez") from None
    unlabelled = "y_train" not in z.files and "y_test" not in z.files  # images alone: distilled, measured by fidelity
    needed = ("x_train", "x_test") if unlabelled else ("x_train", "y_train", "x_test", "y_test")
    missing = [k for k in needed if k not in z.files]
    if missing:
        raise EdgepruneError(
            f"{path} lacks arrays {', '.join(missing)}; it needs x_train, y_train, x_test, y_test "
            f"(or x_train, x_test alone, unlabelled) (found {', '.join(z.files)})"
        )
    arrays = {k: _array(z, k, path) for k in ("x_train", "y_train", "x_test", "y_test", "class_names") if k in z.files}
    names = tuple(arrays["class_names"]) if "class_names" in arrays else ()
    src = str(path)
    return (
        ImageArrays.from_numpy(arrays["x_train"], arrays.get("y_train"), names, src),
        ImageArrays.from_numpy(arrays["x_test"], arrays.get("y_test"), names, src),
    )


def _array(z: Any, key: str, path: Path) -> np.ndarray:
    """One array of an .npz; object arrays (pickled Python objects) are refused, never unpickled."""
    try:
        return z[key]
    except ValueError as err:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        raise EdgepruneError(
            f"{path}: array {key} holds Python objects ({first_line(err)}); "
            "save numeric arrays (uint8 or float images, integer labels) with numpy.savez"
        ) from None
    except Exception as err:  # noqa: BLE001 - a truncated or corrupt member
        raise EdgepruneError(
            f"cannot read array {key} of {path}: {first_line(err)}; write the file again with numpy.savez"
        ) from None


def _folder(root: Path, size: tuple[int, int] | None = None) -> tuple[ImageArrays, ImageArrays]:
    val_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or val_dir is None:
        raise EdgepruneError(f"--data {root}: an image folder needs train/<class>/ and val/<class>/ subfolders")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if not classes:
        raise EdgepruneError(f"{root / 'train'} has no class folders; put images in train/<class>/")
    return _read_split(root / "train", classes, size), _read_split(val_dir, classes, size)


def _flat_folder(root: Path, model: ModelInputs | None, seed: int) -> tuple[ImageArrays, ImageArrays, dict[str, str]]:
    """Unlabelled images under `root`, resized and centre-cropped to the model's input, split."""
    from PIL import Image

    size = model.image_size if model is not None else None
    if model is None or size is None:  # an audio or text model given a folder: an .npz keyed by input name
        takes = [f"{n} {'x'.join(map(str, x.shape))}" for n, x in zip(model.names, model.example)] if model else []
        raise EdgepruneError(
            f"--data {root}: a folder is read as images, and the model's input is not one image "
            f"({' and '.join(takes) or 'unknown'}); pass an .npz of its inputs keyed by their names, e.g. "
            "np.savez('calib.npz', input_values=waveforms)"
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise EdgepruneError(
            f"--data {root} holds no images (.png, .jpg, .jpeg, .bmp, .webp); pass a folder of images, "
            "or one with train/<class>/ and val/<class>/"
        )
    crop_pct = model.preprocess.crop_pct if model.preprocess is not None else 1.0
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                images.append(np.asarray(_fit(im.convert("RGB"), size, crop_pct), dtype=np.uint8))
        except OSError as err:
            raise EdgepruneError(f"cannot decode image {f}: {first_line(err)}; remove or replace it") from None
    arrays = ImageArrays.from_numpy(np.stack(images), None, (), str(root))
    train_idx, val_idx, note = held_out(len(arrays), seed)
    return (
        arrays.subset(train_idx),
        arrays.subset(val_idx),
        {
            "held_out": note,
            "resized": f"shorter side to {round(min(size) / crop_pct)}, centre crop {size[0]}x{size[1]}, RGB",
        },
    )


def _fit(img: Any, size: tuple[int, int], crop_pct: float = 1.0) -> Any:
    """Resize (keeping the aspect) so the crop of `size` takes `crop_pct` of the shorter side, then centre-crop."""
    from PIL import Image

    h, w = size
    scale = max(h, w) / crop_pct / min(img.size)
    # Image.BILINEAR: Pillow sets it at import, untyped (Image.Resampling only from 9.1; pillow>=9 allows 9.0)
    resample = Image.BILINEAR  # type: ignore[attr-defined]
    img = img.resize((max(w, round(img.size[0] * scale)), max(h, round(img.size[1] * scale))), resample)
    left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
    return img.crop((left, top, left + w, top + h))


def _named(path: Path, batch_size: int, eval_batch_size: int, seed: int, model: ModelInputs | None) -> DataBundle:
    """Input arrays keyed by the model's input names (or `x`), labels optional, held out when unsplit."""
    arrays = _read_arrays(path)
    if model is None:
        raise EdgepruneError(f"--data {path}: arrays keyed by input name need the model's inputs to match them against")
    names = model.names or tuple(f"input_{i}" for i in range(len(model.example)))
    images = [k for k in ("x", *names) if k in arrays and arrays[k].dtype == torch.uint8 and arrays[k].ndim == 4]
    if images and len(model.example) == 1:  # uint8 images: scaled, resized and normalised like an image folder's
        return _unsplit_images(arrays, images[0], path, batch_size, eval_batch_size, seed, model)
    given = {k: v for k, v in arrays.items() if k in names}
    if not given and "x" in arrays and len(model.example) == 1:
        given = {names[0]: arrays["x"]}
    if not given:
        raise EdgepruneError(
            f"--data {path} holds {', '.join(sorted(arrays))} and the model takes {', '.join(names)}; "
            f"key the arrays by those names (or one array x)"
        )
    n = int(next(iter(given.values())).shape[0])
    inputs = tuple(_fitted(given.get(name), ex, n, name, path) for name, ex in zip(names, model.example))
    label_key = next((k for k in ("y", "labels", "label") if k in arrays), None)
    labels = torch.as_tensor(arrays[label_key]).long().reshape(-1) if label_key else None
    if labels is not None and len(labels) != n:
        raise EdgepruneError(
            f"--data {path}: {n} inputs but {len(labels)} labels in {label_key}; give one label per input"
        )
    train_idx, val_idx, note = held_out(n, seed)

    def part(idx: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        return tuple(t[idx] for t in inputs), None if labels is None else labels[idx]

    (tx, ty), (vx, vy) = part(train_idx), part(val_idx)
    notes = {
        "held_out": note,
        "inputs": ", ".join(
            f"{name} {'x'.join(map(str, t.shape[1:]))} "
            f"({'from the file' if name in given else 'the example input, repeated'})"
            for name, t in zip(names, inputs)
        ),
    }
    return DataBundle(
        train=TensorLoader(tx, ty, batch_size, shuffle=True, seed=seed),
        val=TensorLoader(vx, vy, eval_batch_size),
        num_classes=int(labels.max()) + 1 if labels is not None else None,
        input_shape=None,
        source=str(path),
        labelled=labels is not None,
        notes=notes,
    )


def _unsplit_images(
    arrays: dict[str, Any], key: str, path: Path, batch_size: int, eval_batch_size: int, seed: int, model: ModelInputs
) -> DataBundle:
    """uint8 images stored under one name (labels optional), held out and prepared as a folder's are."""
    label_key = next((k for k in ("y", "labels", "label") if k in arrays), None)
    labels = arrays[label_key].numpy() if label_key else None
    every = ImageArrays.from_numpy(arrays[key].numpy(), labels, (), str(path))
    size = model.image_size
    if size is not None and tuple(every.images.shape[-2:]) != size:
        raise EdgepruneError(
            f"--data {path}: {key} holds {'x'.join(map(str, every.images.shape[-2:]))} images and the model takes "
            f"{size[0]}x{size[1]}; resize them, or save them as image files in a folder (resized for you)"
        )
    train_idx, val_idx, note = held_out(len(every), seed)
    train, val = every.subset(train_idx), every.subset(val_idx)
    norm, origin = _normalization(train, model)
    return DataBundle(
        train=BatchLoader(train, batch_size, norm, shuffle=True, augment=train.images.shape[-1] <= 64, seed=seed),
        val=BatchLoader(val, eval_batch_size, norm),
        num_classes=train.num_classes,
        input_shape=tuple(train.images.shape[1:]),
        source=str(path),
        normalization=norm,
        train_arrays=train,
        labelled=labels is not None,
        notes={"held_out": note, "normalization_from": origin},
    )


def _read_arrays(path: Path) -> dict[str, Any]:
    """The named arrays of an .npz (never unpickled) or a .pt dict of tensors (weights_only)."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(np.ascontiguousarray(_array(z, k, path))) for k in z.files}
        except EdgepruneError:
            raise
        except Exception as err:  # noqa: BLE001 - zip/format errors all mean "unreadable"
            raise EdgepruneError(f"cannot read {path}: {first_line(err)}; write it with numpy.savez") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise EdgepruneError(f"cannot read {path}: {first_line(err)}; save a dict of tensors with torch.save") from None
    if isinstance(obj, torch.Tensor):
        return {"x": obj}
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise EdgepruneError(f"--data {path} holds a {type(obj).__name__}; save a dict of tensors keyed by input name")
    return dict(obj)


def _fitted(given: torch.Tensor | None, example: torch.Tensor, n: int, name: str, path: Path) -> torch.Tensor:
    """One input for all `n` samples, in the example input's dtype: the file's array (a token
    sequence padded with zeros or cut to the example's length), or the example repeated."""
    if given is None:
        return example.expand(n, *example.shape[1:]).clone()
    if int(given.shape[0]) != n:
        raise EdgepruneError(
            f"--data {path}: {name} has {given.shape[0]} rows and the other inputs {n}; give one row per sample"
        )
    t = given.to(example.dtype)
    if t.ndim == example.ndim and not example.is_floating_point() and t.shape[2:] == example.shape[2:] and t.ndim >= 2:
        length = int(example.shape[1])
        t = (
            t[:, :length]
            if t.shape[1] >= length
            else torch.nn.functional.pad(t, (0, 0) * (t.ndim - 2) + (0, length - t.shape[1]))
        )
    if tuple(t.shape[1:]) != tuple(example.shape[1:]):
        raise EdgepruneError(
            f"--data {path}: {name} is {'x'.join(map(str, t.shape[1:]))} per sample and the model takes "
            f"{'x'.join(map(str, example.shape[1:]))}; pass --input-shape to match, or reshape the data"
        )
    return t


def _read_split(split: Path, classes: Sequence[str], fit: tuple[int, int] | None = None) -> ImageArrays:
    from PIL import Image

    images, labels, size = [], [], (fit[1], fit[0]) if fit else None
    extra = sorted(d.name for d in split.iterdir() if d.is_dir() and d.name not in classes)
    if extra:
        raise EdgepruneError(
            f"{split} has class folders {', '.join(extra)} that train/ lacks; both splits need the same classes"
        )
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
                        img = _fit(img, (size[1], size[0]))
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
        raise EdgepruneError(
            f"cannot import --data {spec} ({first_line(err)}); name a function returning (train_loader, val_loader)"
        ) from None
    result = fn()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise EdgepruneError(f"--data {spec} must return (train_loader, val_loader), got {type(result).__name__}")
    train, val = (_Pairs(loader) for loader in result)
    labelled = next((y is not None for _, y in val), False)
    return DataBundle(train=train, val=val, num_classes=None, input_shape=None, source=spec, labelled=labelled)


class _Pairs:
    """A user's loader as (inputs, labels) batches: a bare tensor is inputs without labels, a dict
    is keyword-named inputs (in the loader's order) with its `labels` or `y` entry, a pair is
    (inputs, labels)."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for batch in self.loader:
            if isinstance(batch, torch.Tensor):
                yield batch, None
            elif isinstance(batch, dict):
                inputs = tuple(v for k, v in batch.items() if k not in ("labels", "y"))
                yield (inputs[0] if len(inputs) == 1 else inputs), batch.get("labels", batch.get("y"))
            else:
                x, y = batch
                yield x, y


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
