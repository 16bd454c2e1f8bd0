"""Loading a user's model: whole modules, state dicts with --arch, and one-line errors for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgeprune import models
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.loading import build_arch, from_module, load_model, parse_input_shape
from tests.tiny_models import TinyResNet, tiny_resnet

TINY_ARCH = "tests.tiny_models:tiny_resnet"


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(EdgepruneError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg.strip(), "an EdgepruneError must say something"
    assert "\n" not in msg, f"multi-line error: {msg!r}"
    return msg


def test_whole_module_loads(tmp_path: Path) -> None:
    model = tiny_resnet()
    path = tmp_path / "tiny.pt"
    torch.save(model, path)
    loaded = load_model(path, input_shape=(1, 3, 32, 32))
    assert isinstance(loaded.model, TinyResNet)
    assert not loaded.model.training
    assert loaded.input_shape == (1, 3, 32, 32)
    assert loaded.source == str(path)
    x = loaded.example_inputs[0]
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_whole_module_needs_a_shape(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny_resnet(), path)
    assert "--input-shape" in one_line_error(load_model, path)


def test_state_dict_with_registry_arch_infers_num_classes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=7).eval()
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch="resnet20")  # no num_classes, no input shape: both inferred
    assert loaded.num_classes == 7
    assert loaded.arch == "resnet20"
    assert loaded.input_shape == models.default_input_shape("resnet20")
    x = loaded.example_inputs[0]
    with torch.no_grad():
        out = loaded.model(x)
        assert out.shape == (1, 7)
        assert torch.allclose(out, model(x))


def test_state_dict_nested_under_state_dict_key(tmp_path: Path) -> None:
    model = tiny_resnet(num_classes=5)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    loaded = load_model(path, arch=TINY_ARCH, input_shape=(1, 3, 32, 32))
    assert loaded.num_classes == 5
    with torch.no_grad():
        assert loaded.model(loaded.example_inputs[0]).shape == (1, 5)


def test_state_dict_with_module_factory_arch(tmp_path: Path) -> None:
    model = tiny_resnet()
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch=TINY_ARCH, input_shape=(1, 3, 32, 32))
    assert isinstance(loaded.model, TinyResNet)
    assert loaded.arch == TINY_ARCH
    x = loaded.example_inputs[0]
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x))


def test_build_arch_factory_and_registry() -> None:
    assert isinstance(build_arch(TINY_ARCH, None), TinyResNet)
    assert build_arch(TINY_ARCH, 3).fc.out_features == 3
    assert build_arch("resnet20", 4).fc.out_features == 4
    assert "cannot import" in one_line_error(build_arch, "tests.tiny_models:no_such_factory", None)
    assert "cannot import" in one_line_error(build_arch, "no_such_package.mod:f", None)
    assert "unknown model" in one_line_error(build_arch, "resnet9000", None)


def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(tiny_resnet()).save(str(path))
    msg = one_line_error(load_model, path, input_shape=(1, 3, 32, 32))
    assert "TorchScript" in msg


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(range(256)) * 16)
    assert "cannot read model file" in one_line_error(load_model, path, input_shape=(1, 3, 32, 32))


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in one_line_error(load_model, tmp_path / "nope.pt")


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    assert "folder without config.json" in one_line_error(load_model, tmp_path)


def test_state_dict_without_arch(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(tiny_resnet().state_dict(), path)
    msg = one_line_error(load_model, path, input_shape=(1, 3, 32, 32))
    assert "--arch" in msg


def test_state_dict_that_does_not_fit_the_arch(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(tiny_resnet().state_dict(), path)
    msg = one_line_error(load_model, path, arch="resnet20")
    assert "does not fit --arch resnet20" in msg


def test_state_dict_with_wrong_widths(tmp_path: Path) -> None:
    """Same keys, different shapes: torch's multi-line size-mismatch text becomes one line."""
    sd = tiny_resnet().state_dict()
    sd["fc.weight"] = torch.zeros(10, 32)
    path = tmp_path / "sd.pt"
    torch.save(sd, path)
    assert "does not fit" in one_line_error(load_model, path, arch=TINY_ARCH, input_shape=(1, 3, 32, 32))


def test_pickle_of_something_else(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    assert "neither an nn.Module nor a state dict" in one_line_error(load_model, path, arch=TINY_ARCH)


def test_wrong_input_shape_for_conv_net(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny_resnet(), path)
    msg = one_line_error(load_model, path, input_shape=(1, 3, 7))
    assert "1x3x7" in msg and "--input-shape" in msg
    assert "--input-shape" in one_line_error(from_module, tiny_resnet(), torch.randn(1, 5, 32, 32))


def test_wrong_feature_size_for_linear_model() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    msg = one_line_error(from_module, model, input_shape=(1, 15))
    assert "1x15" in msg
    assert from_module(model, input_shape=(1, 16)).input_shape == (1, 16)


def test_from_module_accepts_tensor_or_tuple() -> None:
    x = torch.randn(1, 3, 32, 32)
    a = from_module(tiny_resnet(), x)
    b = from_module(tiny_resnet(), (x,))
    assert a.example_inputs[0] is x and b.example_inputs[0] is x
    assert a.source == "python"


def test_from_module_uses_registry_shape() -> None:
    loaded = from_module(models.create("resnet20"), arch="resnet20")
    assert loaded.input_shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    ("text", "shape"),
    [("1x3x224x224", (1, 3, 224, 224)), ("1,3,32,32", (1, 3, 32, 32)), ("1X16", (1, 16)), (" 2x3x8x8 ", (2, 3, 8, 8))],
)
def test_parse_input_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["abc", "", "1x3xx32", "1x0x32x32", "1x-3x32x32", "1x3.5x32"])
def test_parse_input_shape_errors(text: str) -> None:
    msg = one_line_error(parse_input_shape, text)
    assert repr(text) in msg and "1x3x224x224" in msg
