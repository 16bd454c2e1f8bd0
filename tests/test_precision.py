"""int8 in the same budget: quantizing for real (ONNX Runtime, NNCF), the int8 check against PyTorch,
the refusals, the --precision policy end to end on a runtime whose cost is known, the report, and
`compress bench` / `check` on a quantized file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.exporters.onnx import onnx_param_count
from edgeprune.pipeline.data import load_data
from edgeprune.pipeline.measure import TargetMeasurer
from edgeprune.pipeline.precision import INT8_TOLERANCE, Policy, QuantizedMeasurer, check_images, choose
from edgeprune.quantize import quantizer_for
from edgeprune.quantize.ort_static import OrtStaticQuantizer
from edgeprune.runtime_bench import LatencyStats, get_runtime
from edgeprune.runtime_bench.ort_cpu import OrtCpuRuntime
from tests.synthetic import learnable_npz
from tests.test_cli import assert_one_line_error, listing, run_cli
from tests.tiny_models import tiny_resnet

X = (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return learnable_npz(tmp_path_factory.mktemp("p") / "d.npz", n_train=96, n_test=40, size=32, classes=10)


def _int8(runtime: str, work: Path, npz: Path, calibration_scale: float = 1.0) -> QuantizedMeasurer:
    data = load_data(str(npz), batch_size=32)
    base = TargetMeasurer(get_runtime(runtime), X, work, warmup=1, repeats=5)
    return QuantizedMeasurer(
        base, quantizer_for(runtime), data.calibration(64) * calibration_scale, check_images(data.val)
    )


def _op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("runtime", ["ort-cpu", "openvino-cpu"])
def test_int8_model_is_quantized_by_the_backend_and_matches_pytorch_on_the_runtime(
    tmp_path: Path, npz: Path, runtime: str
) -> None:
    rt = get_runtime(runtime)
    if not rt.available()[0]:
        pytest.skip(rt.available()[1])
    model = tiny_resnet()
    m = _int8(runtime, tmp_path, npz).measure(model, "t")
    assert m.artifact.path == tmp_path / "t.int8.onnx" and {"QuantizeLinear", "DequantizeLinear"} <= _op_types(
        m.artifact.path
    )
    check = m.artifact.meta["int8_check"]
    assert check["images"] == 40 and 0 <= check["rel_l2"] <= INT8_TOLERANCE  # all 40 validation images (fewer than 64)
    # what the check claims, recomputed here from the runtime's own outputs
    images = next(iter(load_data(str(npz)).val))[0]
    got = np.concatenate([rt.run(m.session, [images[i : i + 1].numpy()])[0] for i in range(len(images))])
    want = model(images).detach().numpy()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) == pytest.approx(check["rel_l2"], rel=1e-4)
    assert m.stats is not None and m.stats.n == 5


def test_int8_over_its_tolerance_is_refused(tmp_path: Path, npz: Path) -> None:
    """Ranges calibrated on images scaled down 100x clip every real activation: the check must catch it."""
    with pytest.raises(EdgepruneError, match="over the int8 tolerance"):
        _int8("ort-cpu", tmp_path, npz, calibration_scale=0.01).prepare(tiny_resnet(), "t")


def test_int8_without_data_is_refused_in_one_line(tmp_path: Path) -> None:
    torch.save(tiny_resnet(), tmp_path / "m.pt")
    for precision in ("int8", "auto"):
        rc, _, err = run_cli(
            [
                tmp_path / "m.pt",
                "--budget",
                "50%",
                "--input-shape",
                "1x3x32x32",
                "--precision",
                precision,
                "--out",
                tmp_path / "o",
            ]
        )
        assert "needs --data" in assert_one_line_error(rc, err)
    assert not (tmp_path / "o").exists()


def test_int8_on_a_runtime_without_a_backend_is_refused_in_one_line(tmp_path: Path, npz: Path) -> None:
    torch.save(tiny_resnet(), tmp_path / "m.pt")
    rc, _, err = run_cli(
        [
            tmp_path / "m.pt",
            "--budget",
            "50%",
            "--input-shape",
            "1x3x32x32",
            "--precision",
            "int8",
            "--runtime",
            "torch-cpu",
            "--data",
            npz,
            "--out",
            tmp_path / "o",
        ]
    )
    assert "int8 not available on torch-cpu" in assert_one_line_error(rc, err)
    assert not (tmp_path / "o").exists()


# --- the policy alone, with a fake measurer behind its probe and searches ---------------------------------------------


def _policy(
    mode: str,
    probe_value: float,
    searches: dict[str, float | str],
    unavailable: str | None = None,
    calls: list[str] | None = None,
    priors: dict[str, list[dict[str, Any]]] | None = None,
) -> Policy:
    """A run whose float32 baseline is 1.0 and budget 0.5: int8 of the unpruned model measures
    `probe_value`; the search at a precision keeps the FLOPs fraction given, or fails with the text;
    int8 of the float32 plan measures `searches["int8_of"]`, else probe_value x the FLOPs it keeps;
    `priors` records the earlier readings each search was started from."""
    priors = {} if priors is None else priors
    calls = [] if calls is None else calls

    def search(precision: str, prior: list[dict[str, Any]]) -> dict[str, Any]:
        calls.append(precision)
        priors[precision] = prior
        outcome = searches[precision]
        if isinstance(outcome, str):
            raise EdgepruneError(outcome)
        return {"plan": {"kept": outcome}, "steps": [{}], "stop_reason": "within tolerance"}

    def probe() -> dict[str, Any]:
        calls.append("probe")
        return {"value": probe_value, "ratio": probe_value, "within": probe_value <= 0.5 * 0.97, "plan": {"kept": 1.0}}

    def int8_of(searched: dict[str, Any]) -> dict[str, Any]:
        calls.append("int8_of")
        value = float(searches.get("int8_of", probe_value * searched["plan"]["kept"]))
        return {"value": value, "ratio": value, "within": value <= 0.5 * 0.97}

    return Policy(
        mode=mode,
        fp32_why="--precision fp32",
        unavailable=unavailable,
        counted=False,
        baseline_within=False,
        probe=probe,
        search=search,
        flops=lambda d: d["plan"]["kept"] * 100.0,
        baseline_flops=100.0,
        baseline_value=1.0,
        int8_of=int8_of,
        budget_value=0.5,
    )


@pytest.mark.parametrize(
    ("mode", "probe_value", "searches", "chosen", "kept", "calls"),
    [
        ("auto", 0.45, {}, "int8", 1.0, ["probe"]),  # int8 alone fits: nothing pruned, nothing searched
        # float32 first; int8 of its plan at 0.27 leaves room under 0.5: int8 searched too, and prunes less
        ("auto", 0.60, {"int8": 0.8, "fp32": 0.45}, "int8", 0.8, ["probe", "fp32", "int8_of", "int8"]),
        ("auto", 0.60, {"int8": 0.3, "fp32": 0.45}, "fp32", 0.45, ["probe", "fp32", "int8_of", "int8"]),
        ("auto", 0.60, {"int8": 0.45, "fp32": 0.45}, "fp32", 0.45, ["probe", "fp32", "int8_of", "int8"]),  # a tie
        ("auto", 0.60, {"int8": "infeasible", "fp32": 0.2}, "fp32", 0.2, ["probe", "fp32", "int8_of", "int8"]),
        # int8 of the float32 plan at 0.47 of 0.5: no room for a wider int8 plan, int8 not searched
        ("auto", 0.60, {"fp32": 0.45, "int8_of": 0.47}, "fp32", 0.45, ["probe", "fp32", "int8_of"]),
        ("auto", 0.60, {"int8": 0.3, "fp32": "infeasible"}, "int8", 0.3, ["probe", "fp32", "int8"]),  # int8 only way
        ("auto", 1.10, {"fp32": 0.45}, "fp32", 0.45, ["probe", "fp32"]),  # int8 no faster: not searched
        ("int8", 0.60, {"int8": 0.3}, "int8", 0.3, ["probe", "int8"]),
        ("fp32", 0.45, {"fp32": 0.45}, "fp32", 0.45, ["fp32"]),
    ],
)
def test_precision_policy(
    mode: str, probe_value: float, searches: dict[str, Any], chosen: str, kept: float, calls: list[str]
) -> None:
    seen: list[str] = []
    lines: list[str] = []
    priors: dict[str, list[dict[str, Any]]] = {}
    choice = choose(_policy(mode, probe_value, searches, calls=seen, priors=priors), lines.append)
    assert (choice["precision"], choice["search"]["plan"]["kept"], seen) == (chosen, kept, calls)
    assert priors.get("fp32", []) == []  # float32 has no reading of its own before its search
    if "int8" in calls:  # int8 starts from its unpruned reading (over) and, under auto, the float32 plan's (under)
        unpruned = {"plan": {"kept": 1.0}, "value": probe_value, "within": False}
        fp32_plan = [r for r in priors["int8"] if r["plan"] != {"kept": 1.0}]
        assert priors["int8"][0] == unpruned and len(fp32_plan) == ("int8_of" in calls)
        assert all(r["within"] and r["plan"] == {"kept": searches["fp32"]} for r in fp32_plan)
    assert lines[-1] == f"  precision: {chosen} ({choice['why']})"
    if "int8_of" in calls:  # the log says why int8 was searched too, or the choice why it was not
        said = " ".join(lines)
        assert ("int8 candidates too" in said) == ("int8" in calls)
        assert choice["int8_of_fp32_plan"]["searched_int8"] == ("int8" in calls)


@pytest.mark.parametrize(
    ("int8_value", "higher", "max_drop", "chosen", "calls"),
    [
        (0.87, True, 0.02, "int8", ["probe"]),  # one point lost: int8 alone, as on latency
        (0.50, True, 0.02, "fp32", ["probe", "fp32"]),  # a dead int8 model is never chosen, nor searched
        (0.50, True, 0.5, "int8", ["probe"]),  # --max-accuracy-drop allows it
        (float("nan"), True, 0.02, "fp32", ["probe", "fp32"]),
        (0.95, False, 0.02, "fp32", ["probe", "fp32"]),  # lower is better: a rise is the loss
    ],
)
def test_auto_weighs_int8s_metric_on_the_runtime_before_its_latency(
    int8_value: float, higher: bool, max_drop: float, chosen: str, calls: list[str]
) -> None:
    seen: list[str] = []
    metric = {"metric": "top1", "images": 40, "pytorch": 0.88, "runtime": int8_value, "delta": int8_value - 0.88}
    policy = dataclasses.replace(
        _policy("auto", 0.45, {"fp32": 0.45}, calls=seen),
        int8_metric=lambda: metric,
        max_drop=max_drop,
        higher_is_better=higher,
    )
    choice = choose(policy, lambda line: None)
    assert choice["precision"] == chosen and seen == calls and choice["int8_unpruned"]["metric"] == metric
    if chosen == "fp32":
        assert "more than the" in choice["why"] and f"{max_drop:g} allowed" in choice["why"]


def test_precision_policy_without_an_int8_backend_says_why_and_stays_float32() -> None:
    seen: list[str] = []
    choice = choose(
        _policy("auto", 0.3, {"fp32": 0.45}, unavailable="int8 not available on torch-cpu", calls=seen),
        lambda line: None,
    )
    assert choice["precision"] == "fp32" and "int8 not available on torch-cpu" in choice["why"] and seen == ["fp32"]


def test_precision_policy_fails_when_no_precision_meets_the_budget() -> None:
    with pytest.raises(EdgepruneError, match="either precision: int8: too slow; float32: too tight"):
        choose(_policy("auto", 0.6, {"int8": "too slow", "fp32": "too tight"}), lambda line: None)


# --- end to end, on a runtime whose latency is a known function of the file -------------------------------------------


class _CostRuntime(OrtCpuRuntime):
    """ONNX Runtime for the outputs, with a latency that is a known function of the model file
    instead of a timing: parameters / `unit` ms in float32; int8 (a graph with QuantizeLinear) a
    quarter of that plus a fixed 0.25 ms, like the quantize/dequantize and per-op costs that keep
    int8 from shrinking with the widths. The policy's choices then follow from the budget alone."""

    name = "test-cost"
    unit = 1.0  # set by the test: the unpruned model's parameter count

    def load(self, artifact_path: str) -> Any:
        session = super().load(artifact_path)
        int8 = "QuantizeLinear" in _op_types(Path(artifact_path))
        cost = onnx_param_count(artifact_path) / self.unit
        return session, 0.25 * cost + 0.25 if int8 else cost

    def run(self, session: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return super().run(session[0], inputs)

    def measure(self, session: Any, inputs: Sequence[np.ndarray], warmup: int = 10, repeats: int = 50) -> LatencyStats:
        return LatencyStats.from_runs([session[1]] * repeats, warmup)


@pytest.fixture(scope="module")
def cost_runs(tmp_path_factory: pytest.TempPathFactory, npz: Path) -> dict[str, tuple[int, str, dict[str, Any], Path]]:
    """`compress --precision auto` at three budgets on the cost runtime (exit code, stderr, report,
    out); at 60 % without --precision: `auto` is the default with --data."""
    from edgeprune.runtime_bench.registry import RUNTIMES

    tmp = tmp_path_factory.mktemp("auto")
    model = tiny_resnet()
    TargetMeasurer(get_runtime("ort-cpu"), X, tmp).export(model, tmp / "ref.onnx")
    _CostRuntime.unit = float(onnx_param_count(tmp / "ref.onnx"))
    torch.save(model, tmp / "m.pt")
    mp = pytest.MonkeyPatch()
    mp.setitem(RUNTIMES._classes, _CostRuntime.name, _CostRuntime)
    mp.setattr(OrtStaticQuantizer, "runtimes", (*OrtStaticQuantizer.runtimes, _CostRuntime.name))
    runs = {}
    try:
        for budget in ("60%", "40%", "20%"):
            out = tmp / budget.rstrip("%")
            # --search uniform: the cost runtime's latency follows parameters, which a uniform level
            # cuts evenly; the default search's FLOP-guided path jumps in parameters on this tiny net
            rc, _, err = run_cli(
                [
                    tmp / "m.pt",
                    "--budget",
                    budget,
                    "--input-shape",
                    "1x3x32x32",
                    "--runtime",
                    _CostRuntime.name,
                    "--search",
                    "uniform",
                    *([] if budget == "60%" else ["--precision", "auto"]),
                    "--data",
                    npz,
                    "--recover",
                    "finetune",
                    "--steps",
                    "2",
                    "--round-to",
                    "4",
                    "--warmup",
                    "1",
                    "--repeats",
                    "5",
                    "--out",
                    out,
                ]
            )
            rep = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
            runs[budget] = (rc, err, rep, out)
    finally:
        mp.undo()
    return runs


def test_auto_takes_int8_alone_when_it_meets_the_budget(cost_runs: dict) -> None:
    rc, err, rep, out = cost_runs["60%"]  # int8 unpruned costs 0.25 + 0.25 = 0.5 of float32
    assert rc == 0, err
    p = rep["precision"]
    assert p["mode"] == "auto"  # no --precision given: the default with --data
    assert p["chosen"] == "int8" and p["int8_unpruned"]["within"] and p["searched"] == {}
    assert rep["final"]["flops"] == rep["baseline"]["flops"]  # not one channel removed, so nothing to fine-tune
    assert rep["recovery"] is None and "nothing pruned" in err and "recovered" not in rep["accuracy"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(out / "model.onnx")


def test_auto_prunes_int8_less_than_float32_would_at_a_middle_budget(cost_runs: dict) -> None:
    rc, err, rep, _ = cost_runs["40%"]  # int8 needs about 0.55 of the parameters, float32 about 0.39
    assert rc == 0, err
    p = rep["precision"]
    assert p["chosen"] == "int8" and not p["int8_unpruned"]["within"]
    assert p["searched"]["int8"]["flops_ratio"] > p["searched"]["fp32"]["flops_ratio"]
    assert rep["final"]["flops"] / rep["baseline"]["flops"] == pytest.approx(p["searched"]["int8"]["flops_ratio"])
    assert rep["recovery"]["method"] == "finetune"  # recovery in float32, quantized after it


def test_auto_falls_back_to_float32_where_int8_cannot_reach_the_budget(cost_runs: dict) -> None:
    rc, err, rep, out = cost_runs["20%"]  # int8 never goes under its fixed 0.25
    assert rc == 0, err
    p = rep["precision"]
    # int8 of the float32 plan is over the budget itself: an int8 search (as long as the float32
    # one) could not keep more, so it is not run
    assert p["chosen"] == "fp32" and "int8" not in p["searched"] and "int8 was not searched" in p["why"]
    assert p["int8_of_fp32_plan"]["room"] >= 1.0 and not p["int8_of_fp32_plan"]["searched_int8"]
    assert "QuantizeLinear" not in _op_types(out / "model.onnx") and p["quantization"] is None


def test_int8_report_fields(cost_runs: dict) -> None:
    """report.json and report.md of an int8 result: why, how it was quantized, its check against
    PyTorch, its top-1 on the runtime beside PyTorch's, and the published int8 file's hash."""
    _, _, rep, out = cost_runs["40%"]
    p = rep["precision"]
    assert (
        p["mode"] == "auto"
        and p["why"]
        and p["quantization"]["format"] == "QDQ"
        and p["quantization"]["weights"].endswith("per channel")
    )
    assert 0 <= p["int8_check"]["rel_l2"] <= p["int8_check"]["tolerance"] == INT8_TOLERANCE
    ra = rep["runtime_accuracy"]
    assert (
        ra["metric"] == "top1" and ra["images"] == 40 and ra["pytorch"] == pytest.approx(rep["accuracy"]["recovered"])
    )
    assert ra["delta"] == pytest.approx(ra["runtime"] - ra["pytorch"])
    assert rep["outputs_sha256"]["model.onnx"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    plan = json.loads((out / "plan.json").read_text())
    assert (plan["meta"]["precision"], plan["meta"]["precision_why"]) == ("int8", p["why"])
    md = (out / "report.md").read_text()
    assert (
        "## Precision: int8 (--precision auto)" in md
        and f"{ra['runtime']:.4f}" in md
        and "quantized after recovery" in md
    )


# --- the accuracy gate ------------------------------------------------------------------------------------------------


def test_max_accuracy_drop_refuses_the_plan_and_publishes_nothing(tmp_path: Path) -> None:
    """The shipped ResNet-20 cut to a third of its FLOPs without recovery loses most of its top-1
    (a counted budget: the gate is under test, not a timing a busy machine could leave undecided)."""
    from edgeprune.assets import asset

    rc, _, err = run_cli(
        [
            asset("resnet20_cifar10.pt"),
            "--arch",
            "resnet20",
            "--budget",
            "14MFLOPs",
            "--data",
            asset("cifar10_demo.npz"),
            "--recover",
            "none",
            "--max-accuracy-drop",
            "0.05",
            "--warmup",
            "2",
            "--out",
            tmp_path / "o",
        ]
    )
    line = err.strip().splitlines()[-1]  # after the progress lines, the refusal: one line, exit 2
    assert rc == 2 and line.startswith("error:") and "Traceback" not in err
    assert (
        "the best plan found (fp32," in line and "over --max-accuracy-drop 0.05" in line and "nothing published" in line
    )
    assert not (tmp_path / "o" / "model.onnx").exists() and not (tmp_path / "o" / "report.json").exists()
    assert listing(tmp_path / "o") == set()  # work/ and cache/ only: the refused run removed its lock


def test_max_accuracy_drop_needs_top1(tmp_path: Path, npz: Path) -> None:
    torch.save(tiny_resnet(), tmp_path / "m.pt")
    rc, _, err = run_cli(
        [
            tmp_path / "m.pt",
            "--budget",
            "50%",
            "--input-shape",
            "1x3x32x32",
            "--data",
            npz,
            "--max-accuracy-drop",
            "0.01",
            "--metric",
            "edgeprune.pipeline.recovery.evaluate:bits_per_char",
            "--out",
            tmp_path / "o",
        ]
    )
    assert "--max-accuracy-drop needs --data and top-1" in assert_one_line_error(rc, err)


# --- bench and check time a quantized file unchanged ------------------------------------------------------------------


def test_bench_and_check_time_an_int8_onnx(tmp_path: Path, npz: Path) -> None:
    m = _int8("ort-cpu", tmp_path, npz).prepare(tiny_resnet(), "t")
    fp32 = tmp_path / "t.int8-source.onnx"
    rc, out, err = run_cli(["bench", m.artifact.path, "--runtime", "all", "--warmup", "1", "--repeats", "5"])
    assert rc == 0, err
    rows = {
        line.strip("│ ").split()[0]: line
        for line in out.splitlines()
        if line.strip("│ ").startswith(("ort-", "openvino"))
    }
    assert "ort-mobile" in rows and "skipped" not in rows["ort-cpu"] + rows["ort-mobile"]  # timed on both ORT runtimes
    for budget in (["50%", "--baseline", fp32], ["20ms"]):  # timed and judged (0 within, 1 over), whichever it is
        rc, out, err = run_cli(["check", m.artifact.path, "--budget", *budget, "--warmup", "1", "--repeats", "5"])
        assert rc in (0, 1) and ("OK" if rc == 0 else "OVER BUDGET") in out and " ms" in out, err
    rc, out, err = run_cli(["check", m.artifact.path, "--budget", "1Mparams"])
    assert rc == 0 and "OK" in out, err


def test_the_default_precision_is_auto_with_data_and_float32_without(npz: Path) -> None:
    from edgeprune.pipeline.settings import Settings

    assert Settings(budget="50%", data=str(npz)).precision_mode == "auto"
    without = Settings(budget="50%")
    assert without.precision_mode == "fp32" and "no --data" in without.precision_why
    explicit = Settings(budget="50%", data=str(npz), precision="fp32")
    assert explicit.precision_mode == "fp32" and explicit.precision_why == "--precision fp32"


def test_the_int8_search_reuses_what_does_not_depend_on_the_precision(tmp_path: Path) -> None:
    """The int8 search's stages are its own (prefixed), but a kept stage, whose key says what it
    depends on (the sensitivity map), is computed once for both searches."""
    from edgeprune.pipeline.distributed import DistContext
    from edgeprune.pipeline.rundir import RunDir
    from edgeprune.pipeline.stages import Stages

    stages = Stages(RunDir(tmp_path / "out", {"c": 1}), DistContext(), lambda line: None)
    computed: list[str] = []

    def work(name: str) -> Any:
        return lambda: computed.append(name) or {"value": len(computed)}

    for stage in (stages, stages.prefixed("int8_")):
        stage("sensitivity", work("sensitivity"), key={"model": 1})
        stage(
            "latency_calibration",
            work("calibration"),
            key={"model": 1, "precision": "fp32" if stage is stages else "int8"},
        )
        stage("search", work("search"))
    assert computed == ["sensitivity", "calibration", "search", "calibration", "search"]
    assert set(stages.timings) == {
        "sensitivity",
        "latency_calibration",
        "search",
        "int8_sensitivity",
        "int8_latency_calibration",
        "int8_search",
    }


class TinyDetector(torch.nn.Module):
    """A detector's head as exported: boxes decoded to pixels (0-256) concatenated with class
    probabilities (0-1) into one (batch, 4 + classes, positions) output, like YOLOv8's."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, 2, 1)
        )
        self.head = torch.nn.Conv2d(16, 4 + classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(torch.relu(self.body(x))).flatten(2)
        return torch.cat([torch.sigmoid(out[:, :4]) * 256.0, torch.sigmoid(out[:, 4:])], 1)


def test_int8_keeps_a_detectors_class_scores_beside_its_boxes(tmp_path: Path, npz: Path) -> None:
    """The nodes after the last weighted layer (the decoding, the sigmoids, the concatenation) stay
    in float32, so the class scores are not put on the boxes' one-pixel uint8 step."""
    from edgeprune.quantize.ort_static import float_tail

    model = TinyDetector().eval()
    m = _int8("ort-cpu", tmp_path, npz).measure(model, "det")
    graph = onnx.load(str(m.artifact.path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    assert producers[graph.output[0].name].op_type == "Concat"  # made in float, not dequantized
    assert "float32" in m.artifact.meta["quantization"]["float_tail"]
    images = check_images(load_data(str(npz)).val)
    rt = get_runtime("ort-cpu")
    got = torch.cat([torch.from_numpy(rt.run(m.session, [images[i : i + 1].numpy()])[0]) for i in range(len(images))])
    want = model(images).detach()
    scores_err = float((got[:, 4:] - want[:, 4:]).abs().max())
    assert scores_err < 0.05, scores_err  # one uint8 step over 0-256 is 1.0: scores would read 0 or 1
    # the tail is exactly what follows the last weighted layer in the exported float32 graph
    source = onnx.load(str(tmp_path / "det.int8-source.onnx")).graph
    tail_ops = {n.op_type for n in source.node if n.name in set(float_tail(source))}
    assert "Conv" not in tail_ops and {"Sigmoid", "Concat"} <= tail_ops
