"""The `compress` command end to end on a tiny residual CNN, plus bench/check and the error paths.

Latency assertions use only what the tool itself guarantees and judged: the `met` flag and the
ratio of the *interleaved* final/baseline medians in report.json, never absolute times.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune.cli import main
from edgeprune.exporters.onnx import onnx_initializer_shapes, onnx_param_count
from edgeprune.pipeline.counting import count
from edgeprune.pipeline.report import markdown
from edgeprune.pipeline.rundir import LOCK_NAME
from edgeprune.pipeline.summary import summary_table
from edgeprune.runtime_bench import get_runtime
from tests.tiny_models import tiny_resnet

REPO = Path(__file__).resolve().parents[1]
TINY_ARCH = "tests.tiny_models:tiny_resnet"
SHAPE = "1x3x32x32"
FAST = ["--repeats", "20", "--warmup", "3"]
OUTPUTS = ("model.onnx", "model.pt", "state_dict.pt", "plan.json", "report.json", "report.md", "widths.svg")
STAGES = ("space", "baseline", "scores", "search")


def run_cli(args: list[object]) -> tuple[int, str, str]:
    """main() in-process with stdout/stderr captured (usable from module-scoped fixtures too)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got: {err!r}"
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


def listing(out: Path) -> set[str]:
    """What --out holds besides the work/ and cache/ folders the README documents (no lock file, no temporary)."""
    assert all((out / name).is_dir() for name in ("work", "cache") if (out / name).exists())
    return {p.name for p in out.iterdir()} - {"work", "cache"}


def snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    return {name: ((out / name).read_bytes(), (out / name).stat().st_mtime_ns) for name in OUTPUTS}


def e2e_args(files: dict[str, Path], out: Path) -> list[object]:
    return [files["whole"], "--budget", "60%", "--input-shape", SHAPE, "--out", out, *FAST]


@pytest.fixture(scope="module")
def e2e(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One latency-budgeted run shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("e2e") / "out"
    rc, stdout, stderr = run_cli(e2e_args(files, out))
    return {"out": out, "rc": rc, "stdout": stdout, "stderr": stderr}


# --- compress ------------------------------------------------------------------------------------


def test_end_to_end_latency_budget(e2e: dict[str, object]) -> None:
    out: Path = e2e["out"]  # type: ignore[assignment]
    assert e2e["rc"] == 0, e2e["stderr"]
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    rep = json.loads((out / "report.json").read_text())
    assert rep["budget"]["met"] is True, e2e["stderr"]
    assert rep["budget"]["metric"] == "latency"
    decision = rep["budget"]["decision"]  # the rounds' median ratio and its interval, timed interleaved
    assert decision["verdict"] == "under" and decision["low"] <= decision["estimate"] <= decision["high"] < 0.60
    assert rep["speedup"] == pytest.approx(1 / decision["estimate"])
    assert rep["final"]["flops"] < rep["baseline"]["flops"]
    assert rep["final"]["params"] < rep["baseline"]["params"]
    assert rep["search"]["candidates_measured"] >= 1
    assert "MET" in e2e["stdout"]

    # the exported graph is physically smaller
    final_onnx, base_onnx = out / "model.onnx", out / "work" / "baseline.onnx"
    assert onnx_param_count(final_onnx) < onnx_param_count(base_onnx)
    fin, base = onnx_initializer_shapes(final_onnx), onnx_initializer_shapes(base_onnx)
    convs = [n for n in fin if len(fin[n]) == 4 and n in base]
    assert convs, f"no Conv weights in common: {sorted(fin)} vs {sorted(base)}"
    assert any(fin[n][0] < base[n][0] or fin[n][1] < base[n][1] for n in convs)
    assert all(fin[n][0] <= base[n][0] and fin[n][1] <= base[n][1] for n in convs)

    # model.pt runs on the original input shape, with the original output shape
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pruned = torch.load(out / "model.pt", map_location="cpu", weights_only=False).eval()
    with torch.no_grad():
        y = pruned(x)
        assert y.shape == tiny_resnet()(x).shape

    # plan.json + state_dict.pt rebuild the same model from the original architecture
    rebuilt = edgeprune.load_pruned(TINY_ARCH, out / "plan.json", out / "state_dict.pt").eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), y, atol=1e-6)

    # and the ONNX file computes what model.pt computes
    rt = get_runtime("ort-cpu")
    (got,) = rt.run(rt.load(str(final_onnx)), [x.numpy()])
    np.testing.assert_allclose(got, y.numpy(), atol=1e-3, rtol=1e-3)


def test_report_hashes_the_published_set(e2e: dict[str, object]) -> None:
    out: Path = e2e["out"]  # type: ignore[assignment]
    assert e2e["rc"] == 0, e2e["stderr"]
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["outputs_sha256"]) == {"model.onnx", "model.pt", "state_dict.pt", "plan.json"}
    for name, digest in rep["outputs_sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    assert listing(out) == set(OUTPUTS)  # the documented outputs only: the run released --out and removed its lock
    assert not (out / LOCK_NAME).exists()
    assert set(rep["noise"]) == {"baseline", "final"}
    assert rep["noise"]["final"] == rep["final"]["latency_ms"]["noise"]


def test_noisy_p90_is_flagged_not_printed_as_a_ratio(
    e2e: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    rep = json.loads((Path(e2e["out"]) / "report.json").read_text())  # type: ignore[arg-type]
    quiet = dict(rep, noise={"baseline": None, "final": None})
    noisy = dict(rep, noise={"baseline": None, "final": "p90/median 8.59 > 1.5"})  # 6.7 ms p90 beside a 0.78 ms median
    p90_row = lambda md: next(line for line in md.splitlines() if line.startswith("| p90 latency"))  # noqa: E731
    assert re.search(r"\| \d+\.\d{3} \|$", p90_row(markdown(quiet)))
    assert p90_row(markdown(noisy)).endswith("| noisy |")
    assert "Warning: noisy measurement (final: p90/median 8.59 > 1.5)" in markdown(noisy)
    assert "Warning" not in markdown(quiet)
    capsys.readouterr()
    summary_table(noisy)
    table = capsys.readouterr().out
    p90_line = next(line for line in table.splitlines() if "p90 ms" in line)
    assert "noisy" in p90_line and "warning: noisy measurement" in table


def test_resume_reuses_every_stage(
    e2e: dict[str, object], files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out: Path = e2e["out"]  # type: ignore[assignment]
    assert e2e["rc"] == 0, e2e["stderr"]
    first_plan = (out / "plan.json").read_text()
    first = json.loads((out / "report.json").read_text())
    rc, _, err = cli(capsys, *e2e_args(files, out))
    assert rc == 0, err
    for stage in STAGES:
        assert f"[{stage}] resumed" in err, f"{stage} not resumed:\n{err}"
    assert "candidate 1/" not in err  # no search step ran again
    second = json.loads((out / "report.json").read_text())
    assert json.loads((out / "plan.json").read_text()) == json.loads(first_plan)
    assert second["groups"] == first["groups"]
    assert second["search"] == first["search"]
    assert second["final"]["latency_ms"] == first["final"]["latency_ms"]


def test_failed_run_leaves_earlier_results_intact(
    e2e: dict[str, object], tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert e2e["rc"] == 0, e2e["stderr"]
    out = tmp_path / "out"
    shutil.copytree(e2e["out"], out)  # type: ignore[arg-type]
    before = snapshot(out)
    # the narrowest widths allowed still cost several MFLOPs: the search must give up
    rc, _, err = cli(capsys, files["whole"], "--budget", "1MFLOPs", "--input-shape", SHAPE, "--out", out, *FAST)
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert "infeasible" in errors[0] or "lowest" in errors[0]
    assert snapshot(out) == before
    assert listing(out) == set(OUTPUTS)  # what was there before, and no lock left


def test_flops_budget_is_met_by_count(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flops = count(tiny_resnet(), (torch.randn(1, 3, 32, 32),)).flops
    budget = flops / 2 / 1e6
    text = f"{budget:.3f}MFLOPs"
    rc, _, err = cli(capsys, files["whole"], "--budget", text, "--input-shape", SHAPE, "--out", tmp_path / "out", *FAST)
    assert rc == 0, err
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["budget"]["metric"] == "flops"
    assert rep["budget"]["met"] is True
    assert rep["baseline"]["flops"] == flops
    assert rep["final"]["flops"] <= rep["budget"]["value"] <= budget * 1e6 + 1
    assert rep["final"]["flops"] >= 0.5 * rep["budget"]["value"]  # pruned to the budget, not far past it


def test_baseline_already_within_budget(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Also the state dict + `--arch package.module:factory` route, with the arch's shape given."""
    out = tmp_path / "out"
    rc, _, err = cli(
        capsys,
        files["state_dict"],
        "--arch",
        TINY_ARCH,
        "--budget",
        "1000ms",
        "--input-shape",
        SHAPE,
        "--out",
        out,
        *FAST,
    )
    assert rc == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"]["arch"] == TINY_ARCH
    assert rep["search"]["stop_reason"] == "baseline already within budget"
    assert rep["search"]["candidates_measured"] == 0
    assert rep["budget"]["met"] is True
    assert onnx_param_count(out / "model.onnx") == onnx_param_count(out / "work" / "baseline.onnx")
    assert rep["final"]["params"] == rep["baseline"]["params"]


# --- bench and check -----------------------------------------------------------------------------


def test_bench(e2e: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(capsys, "bench", Path(e2e["out"]) / "model.onnx", "--repeats", "20", "--warmup", "3")  # type: ignore[arg-type]
    assert rc == 0, err
    assert "median" in out and "p90" in out
    assert "threads=1" in out


def test_check_latency_budget(e2e: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    onnx = Path(e2e["out"]) / "model.onnx"  # type: ignore[arg-type]
    rc, out, err = cli(capsys, "check", onnx, "--budget", "1000ms", *FAST)
    assert rc == 0, err
    assert "OK" in out
    rc, out, err = cli(capsys, "check", onnx, "--budget", "0.0001ms", *FAST)
    assert rc == 1, err
    assert "OVER BUDGET" in out


def test_check_params_budget(e2e: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    onnx = Path(e2e["out"]) / "model.onnx"  # type: ignore[arg-type]
    n = onnx_param_count(onnx)
    rc, out, _ = cli(capsys, "check", onnx, "--budget", f"{n}params")
    assert rc == 0 and "OK" in out
    rc, out, _ = cli(capsys, "check", onnx, "--budget", f"{n - 1}params")
    assert rc == 1 and "OVER BUDGET" in out
    rc, out, _ = cli(capsys, "check", onnx, "--budget", "1Mparams")
    assert rc == 0


def test_check_relative_budget(e2e: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = Path(e2e["out"])  # type: ignore[arg-type]
    onnx, base = out_dir / "model.onnx", out_dir / "work" / "baseline.onnx"
    rc, _, err = cli(capsys, "check", onnx, "--budget", "90%", *FAST)
    assert "--baseline" in assert_one_line_error(rc, err)
    # the e2e model runs at <= 60% of the baseline (interleaved); 90% leaves a wide margin for noise
    rc, out, err = cli(capsys, "check", onnx, "--budget", "90%", "--baseline", base, *FAST)
    assert rc == 0, out + err
    assert "interleaved" in out and "OK" in out


def test_check_flops_budget_is_refused(e2e: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(capsys, "check", Path(e2e["out"]) / "model.onnx", "--budget", "10MFLOPs")  # type: ignore[arg-type]
    assert "FLOPs" in assert_one_line_error(rc, err)


# --- errors: exit 2, one line on stderr, never a traceback ---------------------------------------


def test_error_missing_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(capsys, tmp_path / "missing.pt", "--budget", "20ms", "--out", tmp_path / "out")
    assert "does not exist" in assert_one_line_error(rc, err)
    assert not (tmp_path / "out").exists()


def test_error_torchscript(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(capsys, files["scripted"], "--budget", "20ms", "--input-shape", SHAPE, "--out", tmp_path / "out")
    assert "TorchScript" in assert_one_line_error(rc, err)


def test_error_state_dict_without_arch(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = cli(capsys, files["state_dict"], "--budget", "20ms", "--input-shape", SHAPE, "--out", tmp_path / "out")
    assert "--arch" in assert_one_line_error(rc, err)


def test_error_wrong_input_shape(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(capsys, files["whole"], "--budget", "20ms", "--input-shape", "1x3x7", "--out", tmp_path / "out")
    assert "--input-shape" in assert_one_line_error(rc, err)
    rc, _, err = cli(capsys, files["whole"], "--budget", "20ms", "--input-shape", "abc", "--out", tmp_path / "out")
    assert "abc" in assert_one_line_error(rc, err)


def test_error_bad_budget(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(capsys, files["whole"], "--budget", "fast", "--input-shape", SHAPE, "--out", tmp_path / "out")
    assert "fast" in assert_one_line_error(rc, err)
    assert not (tmp_path / "out").exists()


def test_error_unknown_runtime(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(
        capsys,
        files["whole"],
        "--budget",
        "20ms",
        "--input-shape",
        SHAPE,
        "--runtime",
        "no-such-rt",
        "--out",
        tmp_path / "out",
    )
    assert "no-such-rt" in assert_one_line_error(rc, err)
    assert not (tmp_path / "out").exists()


def test_error_check_missing_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(capsys, "check", tmp_path / "missing.onnx", "--budget", "1ms")
    assert "does not exist" in assert_one_line_error(rc, err)


def test_error_bench_garbage(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(capsys, "bench", files["garbage"], "--repeats", "5")
    assert_one_line_error(rc, err)


def test_console_script_never_prints_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeprune.cli", "check", str(tmp_path / "missing.onnx"), "--budget", "1ms"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "does not exist" in proc.stderr


# --- Python API ----------------------------------------------------------------------------------


def test_api_prune() -> None:
    model = tiny_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 32, 32)
    pruned = edgeprune.prune(model, x, ratio=0.5)
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(pruned) < n_params(model)
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert model.stem[0].out_channels == 16 and model.block1.conv1.out_channels == 48


def test_api_prune_rejects_bad_ratio() -> None:
    with pytest.raises(edgeprune.errors.EdgepruneError):
        edgeprune.prune(tiny_resnet(), torch.randn(1, 3, 32, 32), ratio=1.0)


def test_api_compress(tmp_path: Path) -> None:
    model = tiny_resnet()
    x = torch.randn(1, 3, 32, 32)
    result = edgeprune.compress(model, "60%", x, out_dir=tmp_path / "out", warmup=3, repeats=20)
    assert result.met is True, result.report["search"]
    assert result.speedup > 1 and result.final_ms < result.baseline_ms
    assert 1 / result.speedup <= 0.60  # the verdict's ratio: the median of the rounds' (the pooled medians' may differ)
    assert (tmp_path / "out" / "report.json").is_file()
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape
