"""ort-cpu runtime, latency statistics and the runtime registry."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.runtime_bench import LatencyStats, Runtime, get_runtime, registry, runtime_names
from edgeprune.runtime_bench.ort_cpu import OrtCpuRuntime

SHAPE = (1, 3, 16, 16)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    """A tiny conv net exported directly with torch, so these tests do not depend on the exporter."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    path = tmp_path_factory.mktemp("ort") / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.randn(*SHAPE),), str(path), dynamo=False, input_names=["input"])
    return path


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)


def test_available():
    assert OrtCpuRuntime().available() == (True, "")


def test_run_returns_numpy_outputs(onnx_file, x):
    rt = OrtCpuRuntime()
    (out,) = rt.run(rt.load(str(onnx_file)), [x])
    assert isinstance(out, np.ndarray) and out.shape == (1, 8)


def test_measure_statistics(onnx_file, x):
    rt = OrtCpuRuntime(threads=1)
    stats = rt.measure(rt.load(str(onnx_file)), [x], warmup=3, repeats=20)
    assert isinstance(stats, LatencyStats)
    assert stats.n == 20 == len(stats.runs_ms) and stats.warmup == 3
    assert 0 < stats.median <= stats.p90
    assert stats.spread >= 1.0
    assert stats.other_cpu_s >= 0.0


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ([np.zeros((1, 3, 8, 8), np.float32)], r"expects shape \(1, 3, 16, 16\), got \(1, 3, 8, 8\)"),
        ([np.zeros((3, 16, 16), np.float32)], r"expects shape \(1, 3, 16, 16\), got \(3, 16, 16\)"),
        ([np.zeros(SHAPE, np.float64)], "expects float32, got float64"),
        ([np.zeros(SHAPE, np.float32)] * 2, "takes 1 input"),
    ],
    ids=["spatial", "rank", "dtype", "count"],
)
def test_mismatched_inputs_are_user_errors(onnx_file, inputs, match):
    rt = OrtCpuRuntime()
    session = rt.load(str(onnx_file))
    with pytest.raises(EdgepruneError, match=match):
        rt.run(session, inputs)
    with pytest.raises(EdgepruneError, match=match):
        rt.measure(session, inputs, warmup=1, repeats=1)


def test_garbage_file_is_a_one_line_user_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model")
    with pytest.raises(EdgepruneError, match=r"bad.onnx") as err:
        OrtCpuRuntime().load(str(bad))
    assert "\n" not in str(err.value)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(EdgepruneError, match="no such ONNX file"):
        OrtCpuRuntime().load(str(tmp_path / "absent.onnx"))


def test_settings_say_how_it_was_configured():
    s = OrtCpuRuntime(threads=2).settings()
    assert s["runtime"] == "ort-cpu" and s["threads"] == 2 and s["graph_optimization"] == "ALL"


def test_from_runs_on_known_numbers():
    stats = LatencyStats.from_runs([float(v) for v in range(1, 11)], warmup=5, other_cpu_s=0.5)
    assert stats.median == pytest.approx(5.5)
    assert stats.p90 == pytest.approx(9.1)  # linear interpolation between 9 and 10
    assert stats.mean == pytest.approx(5.5)
    assert stats.std == pytest.approx(np.std(np.arange(1, 11), ddof=1))
    assert (stats.n, stats.warmup, stats.other_cpu_s) == (10, 5, 0.5)
    assert stats.spread == pytest.approx(9.1 / 5.5)
    assert "runs_ms" not in stats.to_dict() and stats.to_dict(with_runs=True)["runs_ms"] == stats.runs_ms


def test_merged_pools_the_runs():
    a = LatencyStats.from_runs([1.0, 2.0, 3.0], warmup=2, other_cpu_s=0.5)
    b = LatencyStats.from_runs([4.0, 5.0], warmup=3, other_cpu_s=0.25)
    m = a.merged(b)
    assert m.runs_ms == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert (m.n, m.median, m.warmup, m.other_cpu_s) == (5, 3.0, 5, 0.75)


def test_registry_lookup():
    assert "ort-cpu" in runtime_names()
    rt = get_runtime("ort-cpu", threads=2)
    assert isinstance(rt, OrtCpuRuntime) and rt.threads == 2


def test_unknown_runtime_lists_the_known_ones():
    with pytest.raises(EdgepruneError, match=r"unknown runtime .*choose one of: .*ort-cpu"):
        get_runtime("tflite-npu")


def test_unknown_option_is_a_user_error():
    with pytest.raises(EdgepruneError, match="does not accept"):
        get_runtime("ort-cpu", precision="fp16")


def test_registering_a_runtime_makes_it_reachable(monkeypatch):
    monkeypatch.setattr(registry.RUNTIMES, "_classes", dict(registry.RUNTIMES._classes))

    @registry.register
    class Fake(Runtime):
        name = "fake"

        def available(self):
            return True, ""

        def load(self, artifact_path):
            return artifact_path

        def run(self, session, inputs):
            return list(inputs)

    assert "fake" in runtime_names()
    assert isinstance(get_runtime("fake", threads=3), Fake)
    with pytest.raises(TypeError, match="taken"):
        registry.register(type("Other", (Fake,), {}))
