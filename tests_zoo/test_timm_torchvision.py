"""The timm and torchvision doors: `--arch timm:NAME` / `torchvision:NAME` with a state dict (or
none), the model's own input size and normalisation, and `edgeprune.load(out)` rebuilding the
pruned model from plan.json + state_dict.pt. Small models, random weights, counted budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")  # the zoo environment's: skipped, like the other doors' tests, where missing
torchvision = pytest.importorskip("torchvision")

import edgeprune  # noqa: E402
from edgeprune import cli  # noqa: E402
from edgeprune.pipeline.counting import count  # noqa: E402
from edgeprune.pipeline.loading import load_model  # noqa: E402


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = cli.main(list(argv))
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    ("arch", "make"),
    [
        ("timm:resnet10t", lambda: timm.create_model("resnet10t", num_classes=7)),
        ("torchvision:mobilenet_v3_small", lambda: torchvision.models.mobilenet_v3_small(num_classes=7)),
    ],
)
def test_state_dict_by_name_in_and_rebuilt_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arch: str, make
) -> None:
    torch.manual_seed(0)
    model = make().eval()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded = load_model(tmp_path / "sd.pt", arch=arch, input_shape=(1, 3, 64, 64))
    assert loaded.ecosystem == arch.split(":")[0] and loaded.num_classes == 7
    assert loaded.preprocess is not None and loaded.preprocess.mean is not None and loaded.preprocess.size == (64, 64)
    flops = count(loaded.model, loaded.example_inputs).flops
    out = tmp_path / "out"
    rc, err = _run(
        capsys,
        str(tmp_path / "sd.pt"),
        "--arch",
        arch,
        "--input-shape",
        "1x3x64x64",
        "--budget",
        f"{flops * 0.6 / 1e6:.3f}MFLOPs",
        "--out",
        str(out),
        "--precision",
        "fp32",
        "--warmup",
        "2",
        "--repeats",
        "10",
    )
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["ecosystem"] == arch.split(":")[0] and report["native"] is None
    rebuilt = edgeprune.load(out)
    x = torch.randn(2, 3, 64, 64)
    pruned = torch.load(out / "model.pt", map_location="cpu", weights_only=False).eval()
    assert torch.allclose(rebuilt.eval()(x), pruned(x), atol=1e-5)
    assert sum(p.numel() for p in rebuilt.parameters()) < sum(p.numel() for p in model.parameters())


def test_random_weights_by_name_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loaded = load_model(None, arch="timm:resnet10t", input_shape=(1, 3, 64, 64))
    assert "random weights" in loaded.source and loaded.input_shape == (1, 3, 64, 64)
    default = load_model(None, arch="timm:resnet10t")
    assert default.input_shape == (1, 3, 176, 176), "the model's own pretrained_cfg input size"


def test_unknown_name_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(capsys, "--arch", "timm:resnet5O", "--budget", "50%", "--out", str(tmp_path / "o"))
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "timm has no model 'resnet5O'" in lines[0] and "resnet50" in lines[0]
    rc, err = _run(capsys, "--arch", "torchvision:mobilenet_v9", "--budget", "50%", "--out", str(tmp_path / "o"))
    assert rc == 2 and "torchvision has no model 'mobilenet_v9'" in err
