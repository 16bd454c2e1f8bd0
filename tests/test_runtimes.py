"""The other target runtimes: OpenVINO (explicit precision), ORT Mobile's .ort format, the
`--runtime NAME:SETTING` syntax, per-runtime verification, and `compress bench --runtime all`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.cli import main
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.measure import TargetMeasurer, check_outputs
from edgeprune.runtime_bench import get_runtime
from edgeprune.runtime_bench.ort_cpu import OrtCpuRuntime
from tests.test_cli import run_cli
from tests.tiny_models import tiny_resnet

X = (torch.randn(1, 3, 32, 32),)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_resnet().eval()


@pytest.mark.parametrize("name", ["openvino-cpu", "ort-mobile", "ort-mobile:amd64"])
def test_runtime_measures_a_model_that_matches_pytorch(name: str, model, tmp_path: Path) -> None:
    rt = get_runtime(name)
    assert rt.available() == (True, "")
    m = TargetMeasurer(rt, X, tmp_path, warmup=2, repeats=10).measure(model, "tiny")
    assert m.stats.n == 10 and m.stats.median > 0
    assert 0 <= m.max_abs_diff <= 1e-3 * (1 + float(model(*X).detach().abs().max()))  # float rounding only
    if name.startswith("ort-mobile"):
        assert (tmp_path / "tiny.ort").is_file()  # what the phone app would ship


def test_openvino_precision_is_explicit() -> None:
    rt = get_runtime("openvino-cpu")
    assert rt.settings()["precision"] == "f32"  # never OpenVINO's silent bf16 default
    bf16 = get_runtime("openvino-cpu:bf16")
    ok, why = bf16.available()
    import openvino as ov

    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert ok == has_bf16 and (ok or "bf16" in why)
    assert bf16.rtol > rt.rtol  # bf16's rounding is checked against a looser, stated tolerance
    with pytest.raises(EdgepruneError, match="f32, bf16"):
        get_runtime("openvino-cpu:fp8")


def test_runtime_setting_syntax_errors() -> None:
    with pytest.raises(EdgepruneError, match="takes no ':' setting"):
        get_runtime("ort-cpu:fast")
    with pytest.raises(EdgepruneError, match="unknown runtime"):
        get_runtime("tflite")
    with pytest.raises(EdgepruneError, match="arm, amd64"):
        get_runtime("ort-mobile:riscv")


def test_a_runtime_that_computes_something_else_does_not_count() -> None:
    rt = get_runtime("ort-cpu")
    ref = [torch.ones(2, 3)]
    assert check_outputs(rt, [np.ones((2, 3), np.float32)], ref) == 0.0
    with pytest.raises(EdgepruneError, match="would not count"):
        check_outputs(rt, [np.full((2, 3), 1.1, np.float32)], ref)
    with pytest.raises(EdgepruneError, match="shape"):
        check_outputs(rt, [np.ones((3, 2), np.float32)], ref)


def test_bench_all_lists_every_runtime(model, tmp_path: Path) -> None:
    from edgeprune.exporters import OnnxExporter

    path = OnnxExporter().export(model, X, tmp_path / "m.onnx").path
    rc, out, err = run_cli(["bench", path, "--runtime", "all", "--warmup", "1", "--repeats", "5"])
    assert rc == 0, err
    for name in ("ort-cpu", "ort-mobile", "openvino-cpu"):
        assert name in out
    # runs, or says why not
    assert main(["bench", str(path), "--runtime", "openvino-cpu:bf16", "--repeats", "2"]) in (
        0,
        2,
    )


def test_torch_cpu_runtime_times_the_module_itself(model, tmp_path: Path) -> None:
    m = TargetMeasurer(get_runtime("torch-cpu"), X, tmp_path, warmup=2, repeats=10).measure(model, "t")
    assert (tmp_path / "t.pt").is_file() and (
        tmp_path / "t.onnx"
    ).is_file()  # its own file, and the ONNX reports describe
    assert m.max_abs_diff == 0.0 and m.stats.n == 10


def test_compress_measures_on_a_non_onnx_runtime(tmp_path: Path) -> None:
    """The whole pipeline on torch-cpu: candidates and the final model are timed as saved modules,
    and the published deliverable is still the verified ONNX. The window is wide (`--tol 0.5`): this
    checks where the timing happens, not how finely a noisy eager-PyTorch timing can be decided (a
    tiny model's ratios moved 4 % between decisions on one plan here, and a 5 % window then stopped
    the run as too noisy)."""
    path = tmp_path / "tiny.pt"
    torch.save(tiny_resnet(), path)
    out = tmp_path / "out"
    rc, _stdout, err = run_cli(
        [
            path,
            "--budget",
            "60%",
            "--input-shape",
            "1x3x32x32",
            "--runtime",
            "torch-cpu",
            "--round-to",
            "4",
            "--warmup",
            "2",
            "--repeats",
            "20",
            "--tol",
            "0.5",
            "--out",
            out,
        ]
    )
    assert rc in (0, 1), err  # 1: budget missed on a noisy machine is a verdict, not a failure
    import json

    rep = json.loads((out / "report.json").read_text())
    assert rep["runtime"]["runtime"] == "torch-cpu" and (out / "model.onnx").is_file()
    assert rep["search"]["candidates_measured"] >= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU: the GPU runtimes run instead of skipping")
def test_gpu_runtimes_skip_with_a_reason_here(tmp_path: Path) -> None:
    for name in ("torch-cuda", "ort-cuda"):
        ok, why = get_runtime(name).available()
        assert not ok and "CUDA" in why, (name, why)
    ok, why = get_runtime("tensorrt:fp16").available()
    assert not ok and ("tensorrt" in why or "CUDA" in why), why
    path = tmp_path / "tiny.pt"
    torch.save(tiny_resnet(), path)
    rc, _, err = run_cli(
        [path, "--budget", "60%", "--input-shape", "1x3x32x32", "--runtime", "torch-cuda", "--out", tmp_path / "o"]
    )
    assert rc == 2 and "cannot run here" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "report.json").exists()


def test_executorch_runtime_measures_the_lowered_program_or_says_why_not(model, tmp_path: Path) -> None:
    rt = get_runtime("executorch-xnnpack")
    ok, why = rt.available()
    if not ok:  # the optional [mobile] extra is not installed: a clear reason, never a crash
        assert "pip install 'edgeprune[mobile]'" in why
        torch.save(model, tmp_path / "m.pt")
        rc, _, err = run_cli(
            [
                tmp_path / "m.pt",
                "--budget",
                "60%",
                "--input-shape",
                "1x3x32x32",
                "--runtime",
                "executorch-xnnpack",
                "--out",
                tmp_path / "o",
            ]
        )
        assert rc == 2 and "cannot run here" in err and len(err.strip().splitlines()) == 1
        return
    m = TargetMeasurer(rt, X, tmp_path, warmup=2, repeats=10).measure(model, "t")
    assert (tmp_path / "t.pte").is_file() and m.stats.n == 10
    assert 0 <= m.max_abs_diff <= 1e-3 * (1 + float(model(*X).detach().abs().max()))


class _CoarseRuntime(OrtCpuRuntime):
    """ORT with its logits rounded to one decimal: a stand-in for a bf16 runtime, whose accuracy
    effect the pipeline must measure (the real bf16 path needs a CPU with bf16 units)."""

    name = "test-coarse"
    rtol = 1.0  # its verification tolerance, as openvino-cpu:bf16 has its own looser one

    @property
    def reduced_precision(self) -> bool:
        return True

    def run(self, session, inputs):
        return [np.round(o, 1) for o in super().run(session, inputs)]


def test_reduced_precision_runtime_reports_its_accuracy_effect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from edgeprune.runtime_bench.registry import RUNTIMES
    from tests.synthetic import learnable_npz

    monkeypatch.setitem(RUNTIMES._classes, _CoarseRuntime.name, _CoarseRuntime)  # registered for this test only
    npz = learnable_npz(tmp_path / "d.npz", n_train=32, n_test=24, size=32, classes=10)
    torch.save(tiny_resnet(), tmp_path / "m.pt")
    rc, _, err = run_cli(
        [
            tmp_path / "m.pt",
            "--budget",
            "60%",
            "--input-shape",
            "1x3x32x32",
            "--runtime",
            "test-coarse",
            "--data",
            npz,
            "--recover",
            "none",
            "--round-to",
            "4",
            "--warmup",
            "1",
            "--repeats",
            "5",
            "--out",
            tmp_path / "o",
        ]
    )
    assert rc in (0, 1), err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    ra = rep["runtime_accuracy"]
    assert ra["images"] == 24  # every validation image, one inference each
    # the same images as PyTorch's
    assert ra["metric"] == "top1" and ra["pytorch"] == pytest.approx(rep["accuracy"]["pruned"])
    assert ra["delta"] == pytest.approx(ra["runtime"] - ra["pytorch"])
    assert "reduced precision" in (tmp_path / "o" / "report.md").read_text()
