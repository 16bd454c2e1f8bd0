"""ONNX export: the file matches PyTorch, a wrong file is caught, a failed export changes nothing."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.exporters import Artifact, OnnxExporter, get_exporter, onnx_initializer_shapes, onnx_param_count


def tiny_net(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(a + b)
        return y, y.mean(dim=(2, 3))


class ForwardRaises(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken layer")


class Unexportable(nn.Module):
    """Runs in eager mode; neither ONNX exporter supports linalg_eig."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eig(x)[0].real


X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_export_and_verify_match(tmp_path):
    model, exporter = tiny_net(), OnnxExporter()
    art = exporter.export(model, [X], tmp_path / "m.onnx")
    assert art.path.is_file() and art.format == "onnx"
    assert art.meta == {"exporter": "torchscript", "opset": 17, "simplified": True}
    assert exporter.verify(art, model, [X]) < 1e-4
    assert exporter.check(art, model, [X]) < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left beside it


def test_several_inputs_and_outputs_are_named_and_verified(tmp_path):
    model, exporter = TwoInTwoOut(), OnnxExporter()
    a, b = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    art = exporter.export(model, [a, b], tmp_path / "m.onnx")
    graph = onnx.load(str(art.path)).graph
    assert [i.name for i in graph.input] == ["input0", "input1"]
    assert [o.name for o in graph.output] == ["output0", "output1"]
    assert exporter.check(art, model, [a, b]) < 1e-5


def test_export_keeps_the_models_training_mode(tmp_path):
    model = tiny_net().train()
    OnnxExporter().export(model, [X], tmp_path / "m.onnx")
    assert all(m.training for m in model.modules())


def test_perturbed_initializer_fails_the_check(tmp_path):
    model, exporter = tiny_net(), OnnxExporter()
    art = exporter.export(model, [X], tmp_path / "m.onnx")
    proto = onnx.load(str(art.path))
    conv_w = next(t for t in proto.graph.initializer if len(t.dims) == 4)
    conv_w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(conv_w) + 0.5, conv_w.name))
    onnx.save(proto, str(art.path))
    assert exporter.verify(art, model, [X]) > 1e-2
    with pytest.raises(EdgepruneError, match="over the tolerance") as err:
        exporter.check(art, model, [X])
    assert "\n" not in str(err.value)


def test_nan_output_fails_the_check(tmp_path):
    model, exporter = tiny_net(), OnnxExporter()
    art = exporter.export(model, [X], tmp_path / "m.onnx")
    proto = onnx.load(str(art.path))
    conv_w = next(t for t in proto.graph.initializer if len(t.dims) == 4)
    conv_w.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(conv_w), np.nan), conv_w.name))
    onnx.save(proto, str(art.path))
    assert exporter.verify(art, model, [X]) == float("inf")
    with pytest.raises(EdgepruneError):
        exporter.check(art, model, [X])


@pytest.mark.parametrize("model", [ForwardRaises(), Unexportable()], ids=["forward-raises", "unsupported-op"])
def test_failed_export_leaves_the_earlier_file_intact(tmp_path, model):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"earlier result")
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(EdgepruneError) as err:
        OnnxExporter().export(model, [x], out)
    assert out.read_bytes() == b"earlier result"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert "\n" not in str(err.value)


def test_unsupported_op_is_named(tmp_path):
    with pytest.raises(EdgepruneError, match="aten::linalg_eig"):
        OnnxExporter().export(Unexportable(), [torch.randn(1, 3, 4, 4)], tmp_path / "m.onnx")


def test_dynamo_exporter_is_the_fallback(tmp_path, monkeypatch):
    real_export, calls = torch.onnx.export, []

    def torchscript_fails(*args, dynamo, **kwargs):
        calls.append(dynamo)
        if not dynamo:
            raise RuntimeError("tracer cannot handle this")
        kwargs.pop("external_data"), kwargs.pop("verbose")  # stand in for dynamo with the TorchScript exporter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", torchscript_fails)
    art = OnnxExporter().export(tiny_net(), [X], tmp_path / "m.onnx")
    assert calls == [False, True]
    assert art.meta["exporter"] == "dynamo"


@pytest.mark.parametrize("outcome", ["raises", "check-fails"])
def test_failed_simplification_keeps_the_plain_graph(tmp_path, monkeypatch, outcome):
    import onnxsim

    def simplify(proto):
        if outcome == "raises":
            raise RuntimeError("no")
        return proto, False

    monkeypatch.setattr(onnxsim, "simplify", simplify)
    model, exporter = tiny_net(), OnnxExporter()
    art = exporter.export(model, [X], tmp_path / "m.onnx")
    assert art.meta["simplified"] is False and art.meta["simplify_note"]
    assert exporter.check(art, model, [X]) < 1e-4


def test_initializers_show_the_narrower_conv(tmp_path):
    exporter = OnnxExporter()
    wide = exporter.export(tiny_net(8), [X], tmp_path / "wide.onnx").path
    narrow = exporter.export(tiny_net(4), [X], tmp_path / "narrow.onnx").path
    wide_shapes, narrow_shapes = (
        set(onnx_initializer_shapes(wide).values()),
        set(onnx_initializer_shapes(narrow).values()),
    )
    assert {(8, 3, 3, 3), (4, 8, 3, 3)} <= wide_shapes
    assert {(4, 3, 3, 3), (4, 4, 3, 3)} <= narrow_shapes
    # BatchNorm folds into the first conv: conv1 (27w + w) + conv2 (36w + 4)
    assert onnx_param_count(wide) == 64 * 8 + 4
    assert onnx_param_count(narrow) == 64 * 4 + 4


def test_reading_a_non_onnx_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\x00 definitely not protobuf")
    with pytest.raises(EdgepruneError, match=r"bad.onnx"):
        onnx_param_count(bad)


def test_exporter_registry():
    exporter = get_exporter("onnx", opset=13)
    assert isinstance(exporter, OnnxExporter) and exporter.opset == 13
    with pytest.raises(EdgepruneError, match=r"unknown export format .*choose one of: .*onnx"):
        get_exporter("tflite")
    with pytest.raises(EdgepruneError, match="does not accept"):
        get_exporter("onnx", opsett=13)


def test_artifact_is_hashable_with_meta(tmp_path):
    assert hash(Artifact(tmp_path, "onnx", {"simplified": True})) == hash(Artifact(tmp_path, "onnx"))


class _EqualSplit(torch.nn.Module):
    """A Linear whose output is split into equal parts (GPT-2's fused q/k/v)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.lin(x).split(4, dim=-1)
        return a * b + c


def test_dynamo_files_load_in_onnx_runtime(tmp_path, monkeypatch):
    """The dynamo exporter writes opset 18; converted down to 17, its Split kept opset 18's
    num_outputs attribute and ONNX Runtime refused the file (GPT-2, timm's RoPE ViTs)."""
    real_export = torch.onnx.export

    def torchscript_fails(*args, dynamo, **kwargs):
        if not dynamo:
            raise RuntimeError("tracer cannot handle this")
        return real_export(*args, dynamo=True, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", torchscript_fails)
    model, x = _EqualSplit().eval(), torch.randn(2, 8)
    art = OnnxExporter(opset=17).export(model, [x], tmp_path / "m.onnx")
    assert OnnxExporter().check(art, model, [x]) < 1e-5
    assert art.meta["exporter"] == "dynamo" and art.meta["opset"] >= 18


def test_a_weight_normed_model_is_saved_whole_and_the_original_still_runs(tmp_path):
    """torch pickles a parametrized module only through its state dict (Wav2Vec2's positional
    convolution is weight-normed): the torch exporter saves a copy with the weight folded, which
    computes the same, and the model it was given keeps its parametrization and still runs."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import weight_norm

    model = nn.Sequential(weight_norm(nn.Conv1d(2, 4, 3)), nn.ReLU()).eval()
    x = torch.randn(1, 2, 16)
    exporter = get_exporter("torch")
    artifact = exporter.export(model, (x,), tmp_path / "m.pt")
    assert exporter.verify(artifact, model, (x,)) == 0.0
    reloaded = torch.load(artifact.path, weights_only=False)
    assert not parametrize.is_parametrized(reloaded[0]) and parametrize.is_parametrized(model[0])
    assert torch.equal(model(x), reloaded(x))
