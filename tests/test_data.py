"""`--data` sources (npz, image folder, module:function), the batch loader (normalization,
augmentation, sharding) and the one-line errors, on small synthetic data built here."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.data import BatchLoader, ImageArrays, Normalization, check_fits, load_data


def make_npz(
    path: Path,
    n_train: int = 64,
    n_test: int = 20,
    size: int = 16,
    classes: int = 4,
    seed: int = 0,
    layout: str = "nhwc",
    dtype: str = "uint8",
    drop: tuple[str, ...] = (),
) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
        if dtype == "float":
            x = x.astype(np.float32) / 255.0
        if layout == "nchw":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        arrays[f"x_{split}"] = x
        arrays[f"y_{split}"] = np.arange(n) % classes
    np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
    return path


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


def assert_one_line(err: pytest.ExceptionInfo[EdgepruneError], *words: str) -> None:
    text = str(err.value)
    assert "\n" not in text and text.strip() == text and text, repr(text)
    for w in words:
        assert w in text, text


IDENTITY = Normalization([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])


# ---------------------------------------------------------------------------------------------- npz


def test_npz_loads_normalized_nchw(tmp_path: Path) -> None:
    data = load_data(str(make_npz(tmp_path / "d.npz")), batch_size=16, augment=False)
    assert data.num_classes == 4 and data.input_shape == (3, 16, 16)
    assert data.describe()["input_shape"] == [3, 16, 16]
    x, y = collect(data.train)
    assert x.dtype == torch.float32 and x.shape == (64, 3, 16, 16) and y.dtype == torch.int64
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-4)
    assert sorted(y.tolist()) == sorted((np.arange(64) % 4).tolist())
    xv, yv = collect(data.val)
    assert xv.shape == (20, 3, 16, 16) and yv.tolist() == (np.arange(20) % 4).tolist()  # val: not shuffled
    assert len(data.train) == 4 and data.train.num_samples == 64


@pytest.mark.parametrize(("layout", "dtype"), [("nchw", "uint8"), ("nhwc", "float"), ("nchw", "float")])
def test_npz_layouts_and_float(tmp_path: Path, layout: str, dtype: str) -> None:
    ref = load_data(str(make_npz(tmp_path / "ref.npz")), batch_size=64, augment=False)
    data = load_data(str(make_npz(tmp_path / "d.npz", layout=layout, dtype=dtype)), batch_size=64, augment=False)
    assert data.input_shape == (3, 16, 16)
    # the same pixels in another layout or scale give the same normalized batches
    for a, b in zip(collect(ref.train), collect(data.train)):
        assert torch.allclose(a.float(), b.float(), atol=1e-4)


def test_limit_train(tmp_path: Path) -> None:
    data = load_data(str(make_npz(tmp_path / "d.npz")), batch_size=16, limit_train=10)
    assert data.train.num_samples == 10 and data.train_arrays is not None and len(data.train_arrays.labels) == 10


# ---------------------------------------------------------------------------------------- augmentation


def test_augmented_epochs_differ_with_same_labels(tmp_path: Path) -> None:
    data = load_data(str(make_npz(tmp_path / "d.npz")), batch_size=16, augment=True)
    assert data.train.augment
    data.train.set_epoch(0)
    x0, y0 = collect(data.train)
    x0_again, y0_again = collect(data.train)
    data.train.set_epoch(1)
    x1, y1 = collect(data.train)
    assert x0.shape == x1.shape == (64, 3, 16, 16)  # crops keep the shape
    assert not torch.equal(x0, x1)
    assert Counter(y0.tolist()) == Counter(y1.tolist())
    assert torch.equal(x0, x0_again) and torch.equal(y0, y0_again)  # seeded per epoch: reproducible


def test_no_augment_is_deterministic(tmp_path: Path) -> None:
    data = load_data(str(make_npz(tmp_path / "d.npz")), batch_size=16, augment=False)
    assert not data.train.augment
    data.train.set_epoch(3)
    a, b = collect(data.train), collect(data.train)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # without augmentation every training image appears exactly once, unchanged (up to normalization)
    raw = data.train_arrays.float01()
    norm = data.normalization(raw)
    for img, label in zip(a[0][:5], a[1][:5]):
        assert any(
            torch.allclose(img, norm[i], atol=1e-5) for i in range(len(raw)) if data.train_arrays.labels[i] == label
        )


def test_augmented_image_is_a_crop_of_the_padded_original() -> None:
    g = torch.Generator().manual_seed(1)
    n, h, w, pad = 24, 8, 8, 4
    images = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
    arrays = ImageArrays(images, torch.arange(n))
    loader = BatchLoader(arrays, 8, IDENTITY, shuffle=False, augment=True, seed=5, pad=pad)
    flips = 0
    for x, y in loader:
        for img, i in zip(x, y.tolist()):
            got = torch.round(img * 255).to(torch.uint8)
            padded = torch.nn.functional.pad(images[i], (pad, pad, pad, pad))
            matches = [
                (dy, dx, flip)
                for dy in range(2 * pad + 1)
                for dx in range(2 * pad + 1)
                for flip in (False, True)
                if torch.equal(
                    got, padded[:, dy : dy + h, dx : dx + w].flip(-1) if flip else padded[:, dy : dy + h, dx : dx + w]
                )
            ]
            assert matches, f"sample {i} is no crop of its padded original"
            flips += all(m[2] for m in matches)
    assert 0 < flips < n  # some flipped, some not


def test_large_images_are_not_augmented(tmp_path: Path) -> None:
    data = load_data(str(make_npz(tmp_path / "d.npz", n_train=4, n_test=2, size=72)), batch_size=4)
    assert not data.train.augment  # crop + flip is for small natural images only


# ------------------------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("n", [20, 21])
def test_shards_are_disjoint_and_cover_everything(n: int) -> None:
    arrays = ImageArrays(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.arange(n))  # label = index
    seen = []
    for rank in (0, 1):
        loader = BatchLoader(arrays, 4, IDENTITY, shuffle=True, seed=3, num_replicas=2, rank=rank)
        loader.set_epoch(2)
        seen.append(collect(loader)[1].tolist())
        assert len(seen[-1]) == loader.num_samples == -(-n // 2)
    assert set(seen[0]) | set(seen[1]) == set(range(n))
    if n % 2 == 0:
        assert not set(seen[0]) & set(seen[1])
    else:  # an odd set is padded by repeating one sample so both ranks run the same number of steps
        assert len(seen[0]) + len(seen[1]) == n + 1 and len(set(seen[0]) & set(seen[1])) == 1


def test_shards_agree_on_the_shuffle_per_epoch() -> None:
    arrays = ImageArrays(torch.zeros(16, 3, 4, 4, dtype=torch.uint8), torch.arange(16))
    loaders = [BatchLoader(arrays, 4, IDENTITY, shuffle=True, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    per_epoch = []
    for epoch in (0, 1):
        for ld in loaders:
            ld.set_epoch(epoch)
        parts = [collect(ld)[1].tolist() for ld in loaders]
        assert sorted(parts[0] + parts[1]) == list(range(16))
        per_epoch.append(parts[0])
    assert per_epoch[0] != per_epoch[1]


# --------------------------------------------------------------------------------------- image folder


def write_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


COLORS = {"dog": (200, 10, 10), "ant": (10, 200, 10), "cat": (10, 10, 200)}


def make_folder(root: Path, val_name: str = "val", per_class: int = 3) -> Path:
    for split, k in (("train", per_class), (val_name, 2)):
        for cls, color in COLORS.items():
            for i in range(k):
                write_png(root / split / cls / f"{i}.png", color)
    return root


@pytest.mark.parametrize("val_name", ["val", "test"])
def test_image_folder(tmp_path: Path, val_name: str) -> None:
    root = make_folder(tmp_path / "imgs", val_name)
    data = load_data(str(root), batch_size=4, augment=False)
    assert data.num_classes == 3 and data.input_shape == (3, 8, 8)
    assert data.train_arrays.class_names == ("ant", "cat", "dog")  # sorted folder names
    # each label's images carry its class's colour: channel argmax identifies the class
    raw = data.train_arrays
    for img, label in zip(raw.images, raw.labels.tolist()):
        cls = raw.class_names[label]
        assert img[:, 0, 0].tolist() == list(COLORS[cls])
    xv, yv = collect(data.val)
    assert yv.tolist() == [0, 0, 1, 1, 2, 2] and xv.shape == (6, 3, 8, 8)


def test_image_folder_resizes_odd_sizes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs")
    write_png(root / "train" / "cat" / "big.png", COLORS["cat"], size=(12, 10))
    data = load_data(str(root), batch_size=4)
    assert data.input_shape == (3, 8, 8) and data.train.num_samples == 10


# ------------------------------------------------------------------------------------ module:function


def custom_loaders() -> tuple[list, list]:
    """A `--data tests.test_data:custom_loaders` source: any iterables of (inputs, labels)."""
    batch = (torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))
    return [batch, batch], [batch]


def not_a_pair() -> list:
    return []


def test_module_function_source_is_used_as_is() -> None:
    data = load_data("tests.test_data:custom_loaders")
    assert data.num_classes is None and data.input_shape is None and data.normalization is None
    assert len(data.train) == 2 and len(data.val) == 1
    assert next(iter(data.train))[1].tolist() == [0, 1] and data.labelled
    check_fits(data, 2, (1, 3, 4, 4))  # nothing known about the data: nothing to refuse


def bare_inputs() -> tuple[list, list]:
    """A source of inputs alone: no labels."""
    x = torch.zeros(2, 3, 4, 4)
    return [x, x], [x]


def test_module_function_of_bare_inputs_is_unlabelled() -> None:
    data = load_data("tests.test_data:bare_inputs")
    x, y = next(iter(data.val))
    assert y is None and x.shape == (2, 3, 4, 4) and not data.labelled


# ----------------------------------------------------------------------------------------------- errors


def test_error_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(EdgepruneError) as err:
        load_data(str(tmp_path / "nope.npz"))
    assert_one_line(err, "nope.npz", "does not exist")
    with pytest.raises(EdgepruneError) as err:
        load_data(str(tmp_path / "no_folder"))
    assert_one_line(err, "no_folder")


def test_error_npz_lacking_arrays(tmp_path: Path) -> None:
    with pytest.raises(EdgepruneError) as err:
        load_data(str(make_npz(tmp_path / "d.npz", drop=("y_test",))))
    assert_one_line(err, "y_test")


def test_error_npz_unreadable_or_bad_shape(tmp_path: Path) -> None:
    (tmp_path / "bad.npz").write_bytes(b"not a zip at all\n\x00\x01")
    with pytest.raises(EdgepruneError) as err:
        load_data(str(tmp_path / "bad.npz"))
    assert_one_line(err, "bad.npz")
    np.savez(
        tmp_path / "flat.npz",
        x_train=np.zeros((4, 12), np.uint8),
        y_train=np.zeros(4),
        x_test=np.zeros((2, 12), np.uint8),
        y_test=np.zeros(2),
    )
    with pytest.raises(EdgepruneError) as err:
        load_data(str(tmp_path / "flat.npz"))
    assert_one_line(err, "4-D")
    np.savez(
        tmp_path / "count.npz",
        x_train=np.zeros((4, 8, 8, 3), np.uint8),
        y_train=np.zeros(3),
        x_test=np.zeros((2, 8, 8, 3), np.uint8),
        y_test=np.zeros(2),
    )
    with pytest.raises(EdgepruneError) as err:
        load_data(str(tmp_path / "count.npz"))
    assert_one_line(err, "label")


def test_error_empty_class_folders(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "imgs" / split / cls).mkdir(parents=True)
    with pytest.raises(EdgepruneError) as err:
        load_data(str(tmp_path / "imgs"))
    assert_one_line(err, "no images")
    (tmp_path / "bare" / "train").mkdir(parents=True)
    (tmp_path / "bare" / "val").mkdir(parents=True)
    with pytest.raises(EdgepruneError) as err:
        load_data(str(tmp_path / "bare"))
    assert_one_line(err, "class folders")


def test_error_folder_without_val(tmp_path: Path) -> None:
    write_png(tmp_path / "imgs" / "train" / "a" / "0.png", (1, 2, 3))
    with pytest.raises(EdgepruneError) as err:
        load_data(str(tmp_path / "imgs"))
    assert_one_line(err, "val/")


def test_error_val_class_missing_from_train(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs")
    write_png(root / "val" / "zebra" / "0.png", (1, 2, 3))
    with pytest.raises(EdgepruneError) as err:
        load_data(str(root))
    assert_one_line(err, "zebra")


def test_error_undecodable_image(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs")
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG garbage\nmore garbage\x00" * 3)
    with pytest.raises(EdgepruneError) as err:
        load_data(str(root))
    assert_one_line(err, "broken.png")


def test_error_more_classes_than_outputs(tmp_path: Path) -> None:
    data = load_data(str(make_npz(tmp_path / "d.npz", classes=12)))
    with pytest.raises(EdgepruneError) as err:
        check_fits(data, 10, (1, 3, 16, 16))
    assert_one_line(err, "12 classes", "outputs 10")
    check_fits(data, 12, (1, 3, 16, 16))


def test_error_image_size_does_not_fit_model(tmp_path: Path) -> None:
    data = load_data(str(make_npz(tmp_path / "d.npz")))
    with pytest.raises(EdgepruneError) as err:
        check_fits(data, 10, (1, 3, 32, 32))
    assert_one_line(err, "3x16x16", "1x3x32x32")


@pytest.mark.parametrize(
    "spec", ["no_such_module_xyz:loaders", "tests.test_data:no_such_function", ":loaders", ".relative:loaders"]
)
def test_error_unimportable_function(spec: str) -> None:
    with pytest.raises(EdgepruneError) as err:
        load_data(spec)
    assert_one_line(err, spec)


def test_error_function_returning_no_pair() -> None:
    with pytest.raises(EdgepruneError) as err:
        load_data("tests.test_data:not_a_pair")
    assert_one_line(err, "(train_loader, val_loader)")


def test_a_folder_for_a_model_that_takes_no_image_names_its_inputs_and_the_npz_way(tmp_path: Path) -> None:
    """An audio model's waveform (1 x samples) given a folder: one line naming the input and how to key an .npz."""
    from edgeprune.pipeline.data.sources import ModelInputs

    (tmp_path / "a.wav").write_bytes(b"RIFF")
    model = ModelInputs((torch.randn(1, 8000),), ("input_values",))
    with pytest.raises(EdgepruneError, match=r"not one image \(input_values 1x8000\); pass an \.npz .*input_values="):
        load_data(str(tmp_path), model=model)
