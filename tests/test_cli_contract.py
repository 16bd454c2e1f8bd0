"""The command-line contract: every mistake is one line naming the option or file and the fix,
exit 2, before anything is written; nothing the user owns is overwritten; one run per --out; the
CLI says what it can do; noisy measurements are flagged, not passed off as figures.

Most cases stop while the options are parsed or the inputs checked, so they take milliseconds;
the few that run the pipeline use the tiny residual CNN with few repeats.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune.bounds import Bound
from edgeprune.cli import PARSERS, SUBCOMMANDS
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline import measure
from edgeprune.pipeline.compress import Settings
from edgeprune.pipeline.rundir import LOCK_NAME, OutLock, RunDir
from edgeprune.runtime_bench import LatencyStats
from tests.synthetic import learnable_npz
from tests.test_cli import FAST, REPO, SHAPE, TINY_ARCH, assert_one_line_error, cli
from tests.tiny_models import tiny_resnet


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: 'nothing written' and 'byte-identical' in one value."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def npz(path: Path, x_train: np.ndarray, y_train: np.ndarray) -> Path:
    np.savez(path, x_train=x_train, y_train=y_train, x_test=np.zeros((4, 32, 32, 3), np.uint8), y_test=np.arange(4))
    return path


# --- 1. validate at the edge ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--threads", "0"),
        ("--threads", "-1"),
        ("--warmup", "0"),
        ("--repeats", "0"),
        ("--repeats", "100000000"),
        ("--max-candidates", "0"),
        ("--batch-size", "0"),
        ("--epochs", "0"),
        ("--steps", "-3"),
        ("--round-to", "0"),
        ("--tol", "0"),
        ("--tol", "-0.1"),
        ("--tol", "0.02"),
        ("--tol", "1.5"),
        ("--alpha", "2"),
        ("--temperature", "0"),
        ("--lr", "0"),
        ("--num-classes", "0"),
        ("--pgd-steps", "0"),
        ("--slimming-lambda", "-1"),
        ("--repeats", "many"),
    ],
)
def test_out_of_range_option_is_one_line_naming_its_range(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    out = tmp_path / "out"
    rc, _, err = cli(capsys, files["whole"], "--budget", "60%", "--input-shape", SHAPE, "--out", out, option, value)
    line = assert_one_line_error(rc, err)
    assert option in line and ("must be" in line or "is not" in line), line
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "x.onnx", "--threads", "0"],
        ["check", "x.onnx", "--budget", "1ms", "--repeats", "0"],
        ["agent", "--port", "70000"],
        ["agent", "--max-upload-mb", "0"],
        ["demo", "--epochs", "0"],
        ["train", "--arch", "resnet20", "--out", "m.pt", "--batch-size", "0"],
    ],
)
def test_subcommands_check_their_options_too(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    rc, _, err = cli(capsys, *argv)
    assert argv[-2] in assert_one_line_error(rc, err)


def test_python_api_checks_the_same_ranges(tmp_path: Path) -> None:
    for bad in (
        {"repeats": 0},
        {"tol": 0.0},
        {"threads": -2},
        {"round_to": 0},
        {"max_candidates": 0},
        {"batch_size": 0},
    ):
        with pytest.raises(EdgepruneError, match=f"--{next(iter(bad)).replace('_', '-')}"):
            edgeprune.compress(tiny_resnet(), "60%", torch.randn(1, 3, 32, 32), out_dir=tmp_path / "out", **bad)
    assert not (tmp_path / "out").exists()
    with pytest.raises(EdgepruneError, match="--recover distill needs training data"):
        Settings(budget="50%", recover="distill")
    with pytest.raises(EdgepruneError, match="cannot read budget"):
        Settings(budget="fast")


def test_bound_describes_and_checks_open_and_closed_ends() -> None:
    b = Bound(float, 0.03, 1, lo_open=True, hi_open=True)
    assert b.describe() == "a number in (0.03, 1)"
    assert [b.contains(v) for v in (0.03, 0.031, 0.999, 1.0, float("nan"))] == [False, True, True, False, False]
    count = Bound(int, 1, 10)
    assert count.describe() == "an integer in [1, 10]"
    assert [count.contains(v) for v in (0, 1, 10, 11, 2.0, True)] == [False, True, True, False, False, False]


def test_unknown_unprunable_layer(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(
        capsys,
        files["whole"],
        "--budget",
        "60%",
        "--input-shape",
        SHAPE,
        "--out",
        tmp_path / "out",
        "--unprunable",
        "block1.conv1,block9.conv1",
    )
    line = assert_one_line_error(rc, err)
    assert "--unprunable block9.conv1:" in line and "block1.conv2" in line  # names the typo alone, shows real names
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("objects", "holds Python objects"),
        ("strings", "must be uint8 or float"),
        ("negative_labels", "labels must be class indices"),
        ("fractional_labels", "labels must be integer"),
        ("too_many_classes", "the model outputs 10"),
    ],
)
def test_bad_data_arrays(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, expect: str
) -> None:
    images = np.zeros((8, 32, 32, 3), np.uint8)
    x, y = {
        "objects": (np.array([None] * 8, dtype=object), np.arange(8)),
        "strings": (np.full((8, 32, 32, 3), "a"), np.arange(8)),
        "negative_labels": (images, np.arange(8) - 1),
        "fractional_labels": (images, np.arange(8) + 0.5),
        "too_many_classes": (images, np.arange(8) * 3),  # labels up to 21 for a 10-way classifier
    }[case]
    data = npz(tmp_path / "d.npz", x, y)
    rc, _, err = cli(
        capsys,
        files["whole"],
        "--budget",
        "60%",
        "--input-shape",
        SHAPE,
        "--out",
        tmp_path / "out",
        "--data",
        data,
        "--recover",
        "none",
    )
    assert expect in assert_one_line_error(rc, err)
    assert not (tmp_path / "out").exists()


def test_input_shape_that_cannot_be_allocated(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = cli(
        capsys, files["whole"], "--budget", "60%", "--input-shape", "1x3x200000x200000", "--out", tmp_path / "out"
    )
    assert "smaller --input-shape" in assert_one_line_error(rc, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("arch", "expect"),
    [
        ("os:getcwd", "returned a str, not an nn.Module"),
        ("json:dumps", "raised TypeError"),
        ("os:sep", "is not a model factory"),
        ("no_such_module_xyz:f", "cannot import"),
    ],
)
def test_arch_that_is_not_a_model_factory(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], arch: str, expect: str
) -> None:
    rc, _, err = cli(
        capsys,
        files["state_dict"],
        "--arch",
        arch,
        "--budget",
        "60%",
        "--input-shape",
        SHAPE,
        "--out",
        tmp_path / "out",
    )
    assert expect in assert_one_line_error(rc, err)


def test_state_dict_mismatch_is_summarised(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = cli(capsys, files["state_dict"], "--arch", "resnet20", "--budget", "60%", "--out", tmp_path / "out")
    line = assert_one_line_error(rc, err)
    assert re.search(r"\d+ missing \(e\.g\. \S+\), \d+ unexpected \(e\.g\. stem\.0\.weight\)", line), line
    assert "check --arch" in line and not line.rstrip().endswith(":")
    rc, _, err = cli(
        capsys,
        files["state_dict"],
        "--arch",
        TINY_ARCH,
        "--num-classes",
        "7",
        "--budget",
        "60%",
        "--input-shape",
        SHAPE,
        "--out",
        tmp_path / "out",
    )
    line = assert_one_line_error(rc, err)
    # fc weight and bias
    assert "2 of another shape (e.g. fc.weight: file 10x64, tests.tiny_models:tiny_resnet 7x64)" in line, line
    assert "missing" not in line and "--num-classes" in line


def test_repeats_that_would_take_too_long(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(measure, "MAX_MEASURE_S", 0.001)  # any real model's 10 + 50 runs take longer
    rc, _, err = cli(capsys, files["whole"], "--budget", "60%", "--input-shape", SHAPE, "--out", tmp_path / "out")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1, err
    assert "--repeats" in errors[0] and "min per measurement" in errors[0]
    assert not any((tmp_path / "out" / name).exists() for name in ("model.onnx", "report.json"))


# --- 2. protect what the user owns ---------------------------------------------------------------


def test_out_holding_the_model_is_refused(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_bytes(files["whole"].read_bytes())  # the layout that used to lose the user's model
    before = tree(out)
    rc, _, err = cli(capsys, out / "model.pt", "--budget", "60%", "--input-shape", SHAPE, "--out", out, *FAST)
    line = assert_one_line_error(rc, err)
    assert "contains the input" in line and "--out" in line
    assert tree(out) == before
    nested = tmp_path / "runs"
    (nested / "a").mkdir(parents=True)
    (nested / "a" / "m.pt").write_bytes(files["whole"].read_bytes())
    rc, _, err = cli(capsys, nested / "a" / "m.pt", "--budget", "60%", "--input-shape", SHAPE, "--out", nested, *FAST)
    assert "contains the input" in assert_one_line_error(rc, err)


def test_out_holding_or_inside_the_data_is_refused(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = learnable_npz(data_dir / "d.npz", size=32, classes=3)
    images = tmp_path / "images"  # an image-folder data set: an --out inside it would become a class folder's sibling
    for split in ("train", "val"):
        (images / split / "cat").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(images / split / "cat" / "0.png")
    before = tree(tmp_path)
    for data_arg, out, expect in (
        (data, data_dir, "contains the input"),
        (images, images / "out", "inside the input folder"),
    ):
        rc, _, err = cli(
            capsys, files["whole"], "--budget", "60%", "--input-shape", SHAPE, "--data", data_arg, "--out", out, *FAST
        )
        assert expect in assert_one_line_error(rc, err)
    assert tree(tmp_path) == before


def test_out_that_is_a_file_or_below_one(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "results.txt"
    f.write_text("mine\n")
    for out, expect in ((f, "is a file"), (f / "sub", "is a file, so the folder cannot be made")):
        rc, _, err = cli(capsys, files["whole"], "--budget", "60%", "--input-shape", SHAPE, "--out", out)
        assert expect in assert_one_line_error(rc, err)
    assert f.read_text() == "mine\n"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, a folder nobody can create files in")
def test_out_that_cannot_be_written(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(
        capsys, files["whole"], "--budget", "60%", "--input-shape", SHAPE, "--out", "/proc/edgeprune-out", *FAST
    )
    line = assert_one_line_error(rc, err)
    assert "cannot write in" in line and "--out" in line


def test_a_second_run_on_a_locked_out_stops_at_once(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    holder = OutLock(out).acquire()  # another run, as far as the lock can tell (flock is per open file)
    try:
        before = tree(out)
        rc, _, err = cli(capsys, files["whole"], "--budget", "60%", "--input-shape", SHAPE, "--out", out, *FAST)
        line = assert_one_line_error(rc, err)
        assert "in use by another run" in line and f"pid {os.getpid()}" in line
        assert tree(out) == before  # not even a work folder
    finally:
        holder.release()
    assert not (out / LOCK_NAME).exists()  # released cleanly and removed: nothing left beside the outputs
    again = OutLock(out).acquire()
    assert again.taken_over is None
    again.release()


@pytest.mark.parametrize("holder_at", ["closed", "unlinked"])
def test_a_lock_released_under_a_run_opening_it_is_never_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, holder_at: str
) -> None:
    """A run that opened the lock file just before its holder deleted it on release must not lock
    the deleted file (a third run would then lock a new file of the same name beside it)."""
    import fcntl

    from edgeprune.pipeline import rundir

    out = tmp_path / "out"
    first = OutLock(out).acquire()
    real, calls = fcntl.flock, []

    def flock(fd: int, op: int) -> None:
        if not calls:  # the holder finishes between our open and our flock
            if holder_at == "closed":
                first.release()  # unlinked and closed: our flock succeeds, on the deleted file
            else:
                (out / LOCK_NAME).unlink()  # unlinked, not yet closed: our flock fails on a deleted file
        calls.append(fd)
        real(fd, op)

    monkeypatch.setattr(rundir.fcntl, "flock", flock)
    second = OutLock(out).acquire()
    monkeypatch.undo()
    assert len(calls) == 2  # the deleted file was seen, and the new one locked
    first.release()  # a no-op, or closing the deleted file: the new lock file stays
    with pytest.raises(EdgepruneError, match=f"in use by another run \\(pid {os.getpid()}"):
        OutLock(out).acquire()
    second.release()
    assert not (out / LOCK_NAME).exists()


def test_an_interrupted_run_removes_its_lock(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeprune.pipeline.compress import Pipeline

    def interrupted(self: object) -> None:
        assert (out / LOCK_NAME).exists()  # held while the stages run
        raise KeyboardInterrupt

    out = tmp_path / "out"
    monkeypatch.setattr(Pipeline, "analyse", interrupted)
    rc, _, err = cli(capsys, files["whole"], "--budget", "60%", "--input-shape", SHAPE, "--out", out, *FAST)
    assert rc == 130 and "interrupted" in err, err
    assert {p.name for p in out.iterdir()} == {"work"}  # no lock left beside it


def test_a_killed_runs_lock_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = (
        f"from edgeprune.pipeline.rundir import OutLock; OutLock({str(out)!r}).acquire(); "
        "print('locked', flush=True); input()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(EdgepruneError, match=f"pid {proc.pid}"):
            OutLock(out).acquire()
    finally:
        proc.kill()  # SIGKILL: no chance to release
        proc.wait()
    lock = OutLock(out).acquire()
    assert lock.taken_over is not None and lock.taken_over["pid"] == proc.pid
    lock.release()


def test_publish_is_all_or_nothing(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "out", {"c": 1})
    for name in ("a.txt", "b.txt"):
        run.path(name).write_text(f"new {name}")
        (run.out / name).write_text(f"old {name}")
    before = tree(run.out)
    with pytest.raises(FileNotFoundError):
        run.publish({"a.txt": run.path("a.txt"), "b.txt": run.path("b.txt"), "c.txt": run.path("missing")})
    assert tree(run.out) == before  # a.txt was copied beside its destination, but not moved over it
    run.publish({"a.txt": run.path("a.txt"), "b.txt": run.path("b.txt")})
    assert (run.out / "a.txt").read_text() == "new a.txt" and (run.out / "b.txt").read_text() == "new b.txt"
    assert not list(run.out.glob(".*.tmp"))


# --- 3. a discoverable CLI -----------------------------------------------------------------------


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli(capsys, "--help")
    assert done.value.code == 0
    text = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", text, re.M), f"{name} missing from:\n{text}"


def test_compress_alone_shows_how_to_start(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _out, err = cli(capsys)
    assert rc == 2
    assert "compress demo" in err and "--budget" in err and "required" not in err
    assert all(name in err for name in SUBCOMMANDS)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_option_has_help_with_its_default_and_range(command: str) -> None:
    parser = PARSERS[command]()
    text = " ".join(parser.format_help().split())  # unwrapped
    assert "BENCHMARKING" not in text
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        if action.default is not None and not isinstance(action.default, bool) and action.default != "":
            assert f"default {action.default}" in text, f"{command} {action.option_strings[0]}: default not shown"
        bound = getattr(action.type, "bound", None)
        if bound is not None:
            assert bound.describe() in text, f"{command} {action.option_strings[0]}: range not shown"


# --- 4. honest measurement display ---------------------------------------------------------------


def test_noise_flags() -> None:
    quiet = LatencyStats.from_runs([1.0] * 9 + [1.1], warmup=1, other_cpu_s=0.0, cpus=2)
    assert quiet.noise is None
    # the p90-beside-median case of the issue
    spread = LatencyStats.from_runs([0.78] * 8 + [7.0, 21.0], warmup=1, cpus=2)
    assert spread.noise is not None and "p90/median" in spread.noise
    # 15 ms of others' CPU in 10 ms x 2 CPUs
    busy = LatencyStats.from_runs([1.0] * 10, warmup=1, other_cpu_s=0.015, cpus=2)
    assert busy.noise is not None and "other processes used 75%" in busy.noise
    again = LatencyStats.from_dict(busy.to_dict(with_runs=True))
    assert again.noise == busy.noise and busy.to_dict()["noise"] == busy.noise


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs the git checkout (git check-ignore)")
def test_wheelhouse_is_not_committed() -> None:
    done = subprocess.run(["git", "check-ignore", "-q", "wheelhouse/torch-2.13.0-cp311-none-any.whl"], cwd=REPO)
    assert done.returncode == 0
    assert "wheelhouse" not in (REPO / ".dockerignore").read_text()  # the build mounts it
