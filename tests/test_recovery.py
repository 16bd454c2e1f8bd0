"""Recovery: the metric, the training loop (fine-tune, distill, scratch), checkpoint/resume, and
`compress train` / `compress --data --recover` end to end on small synthetic data built here."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.cli import main
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.data import load_data
from edgeprune.pipeline.recovery import TrainConfig, get_recovery, load_metric, recovery_names, top1, train
from edgeprune.pipeline.recovery.distill import dense_output, kd_loss, regression
from edgeprune.pipeline.recovery.scratch import reinitialize
from tests.synthetic import learnable_npz
from tests.tiny_models import tiny_resnet

TINY_ARCH = "tests.tiny_models:tiny_resnet"
FAST = ["--repeats", "20", "--warmup", "3"]
QUIET = lambda line: None  # noqa: E731


def small_cnn(num_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes)
    )


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return learnable_npz(tmp_path_factory.mktemp("data") / "learn.npz")


@torch.no_grad()
def mean_loss(model: nn.Module, loader, fn) -> float:
    was = model.training
    model.eval()
    total = n = 0.0
    for x, y in loader:
        total += float(fn(model, x, y)) * len(y)
        n += len(y)
    model.train(was)
    return total / n


def run_cli(args: list[object]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


# ------------------------------------------------------------------------------------------ metric


class FixedPredictions(nn.Module):
    """Predicts the class written in x[:, 0] (one-hot logits); records the mode it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return F.one_hot(x[:, 0].long(), 3).float()


def test_top1_exact_and_restores_mode() -> None:
    loader = [
        (torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([0, 1, 1])),  # 2 right
        (torch.tensor([[2.0], [0.0]]), torch.tensor([2, 1])),  # 1 right
    ]
    model = FixedPredictions().train()
    assert top1(model, loader) == pytest.approx(3 / 5)
    assert model.training and model.modes == [False, False]
    model.eval()
    assert top1(model, loader) == pytest.approx(3 / 5) and not model.training
    with pytest.raises(EdgepruneError):
        top1(model, [])


def test_load_metric() -> None:
    assert load_metric(None)[0] == "top1" and load_metric(None)[1] is top1
    name, fn = load_metric("edgeprune.pipeline.recovery.evaluate:top1")
    assert fn is top1 and name == "edgeprune.pipeline.recovery.evaluate:top1"
    for spec in ("no_such_module_xyz:f", "edgeprune.pipeline.recovery.evaluate:nope", ":f", ".rel:f"):
        with pytest.raises(EdgepruneError) as err:
            load_metric(spec)
        assert "\n" not in str(err.value) and spec in str(err.value)


def test_registry() -> None:
    assert recovery_names() == ["adversarial", "distill", "finetune", "scratch"]
    with pytest.raises(EdgepruneError) as err:
        get_recovery("magic")
    assert "distill" in str(err.value)


# ----------------------------------------------------------------------------------------- losses


def test_kd_loss_limits() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    assert torch.allclose(kd_loss(s, t, y, temperature=3.0, alpha=0.0), F.cross_entropy(s, y))
    T = 3.0
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum(1).mean()
    assert torch.allclose(kd_loss(s, t, y, temperature=T, alpha=1.0), T * T * kl)
    mix = kd_loss(s, t, y, temperature=T, alpha=0.25)
    assert torch.allclose(mix, 0.25 * T * T * kl + 0.75 * F.cross_entropy(s, y))
    assert float(kd_loss(t, t, y, temperature=T, alpha=1.0)) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------ fine-tune, distill


def test_finetune_lowers_the_loss(npz: Path) -> None:
    data = load_data(str(npz), batch_size=16)
    model = small_cnn()
    ce = lambda m, x, y: F.cross_entropy(m(x), y)  # noqa: E731
    before_loss, before_acc = mean_loss(model, data.val, ce), top1(model, data.val)
    result = get_recovery("finetune").fit(model, small_cnn(seed=1), data, TrainConfig(epochs=5, lr=0.05), log=QUIET)
    assert len(result.history) == 5 and result.history[-1]["steps"] == 30 and result.resumed_from_epoch == 0
    assert result.history[-1]["loss"] < 0.7 * result.history[0]["loss"]
    after_loss = mean_loss(model, data.val, ce)
    assert after_loss < 0.7 * before_loss
    assert result.final_metric == top1(model, data.val) and result.final_metric > max(before_acc, 0.6)
    assert all(0.0 <= h["train_acc"] <= 1.0 for h in result.history)
    assert model.training  # given in train mode, left in train mode


def test_few_steps_per_epoch_suggest_a_smaller_batch(npz: Path) -> None:
    lines: list[str] = []
    config = TrainConfig(steps=1, lr=0.01)
    get_recovery("finetune").fit(small_cnn(), small_cnn(), load_data(str(npz), batch_size=16), config, log=lines.append)
    assert any("6 steps per epoch" in line and "--batch-size" in line for line in lines), lines
    lines.clear()
    get_recovery("finetune").fit(small_cnn(), small_cnn(), load_data(str(npz), batch_size=4), config, log=lines.append)
    assert not any("steps per epoch" in line for line in lines), lines  # 24 steps: no note


def test_distillation_trains_batch_norm_but_not_dropout() -> None:
    from edgeprune.pipeline.recovery.distill import train_norms_only

    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    train_norms_only(model)
    assert [m.training for m in model] == [False, True, False, False]


def test_distill_moves_toward_a_fixed_teacher(npz: Path) -> None:
    data = load_data(str(npz), batch_size=16)
    teacher = small_cnn(seed=7)
    teacher_before = copy.deepcopy(teacher.state_dict())
    student = small_cnn(seed=0)

    def kd(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return kd_loss(m(x), teacher(x), y, temperature=4.0, alpha=1.0)

    before = mean_loss(student, data.train, kd)
    result = get_recovery("distill", temperature=4.0, alpha=1.0).fit(
        student, teacher, data, TrainConfig(steps=30, lr=0.05), log=QUIET
    )
    after = mean_loss(student, data.train, kd)
    assert result.history[-1]["steps"] == 30
    assert after < 0.5 * before, (before, after)
    student.eval()
    get_recovery("distill").fit(student, teacher, data, TrainConfig(steps=1, lr=0.01), log=QUIET)
    assert not student.training  # given in eval mode, handed back in eval mode
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())  # the teacher is not trained


class DictOutput(nn.Module):
    """A classifier that returns its logits inside a dict beside a feature (as a Hugging Face
    ModelOutput does): labelled recovery must read the logits, not fail on the structure."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.net = small_cnn(seed=seed)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x), "pooled": x.mean(dim=(2, 3))}


@pytest.mark.parametrize("name", ["finetune", "distill"])
def test_labelled_recovery_of_a_structured_output(npz: Path, name: str) -> None:
    data = load_data(str(npz), batch_size=16)
    model = DictOutput(seed=0)
    before = top1(model, data.val)
    result = get_recovery(name).fit(model, DictOutput(seed=1), data, TrainConfig(epochs=3, lr=0.05), log=QUIET)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.final_metric == top1(model, data.val) and result.final_metric > before


def _detections(seed: int = 0) -> torch.Tensor:
    """A detector's output as YOLO exports it: (batch, 4 boxes in pixels + 3 class probabilities, anchors),
    most anchors background (scores near 0)."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.rand(2, 4, 50, generator=g) * 160
    scores = torch.sigmoid(torch.randn(2, 3, 50, generator=g) * 2 - 6)
    scores[:, 0, :5] = 0.9  # five confident anchors
    return torch.cat([boxes, scores], dim=1)


def test_dense_output_scores_by_cross_entropy_and_boxes_by_confidence() -> None:
    t = _detections()
    assert float(dense_output(t, t)) == pytest.approx(0.0, abs=1e-5)
    off_confident, off_background = t.clone(), t.clone()
    off_confident[:, :4, 2] += 20  # the same box error at a confident anchor ...
    off_background[:, :4, 30] += 20  # ... and at a background one
    assert float(dense_output(off_confident, t)) > 10 * float(dense_output(off_background, t))
    # a near-0 score pushed further down still costs, and its gradient points back up
    low = t.clone().requires_grad_(True)
    with torch.no_grad():
        low[:, 4:, 10:] *= 0.1
    loss = dense_output(low, t)
    loss.backward()
    assert float(loss.detach()) > 0 and float(low.grad[:, 4:, 10:].mean()) < 0
    values = t[:, :4]  # no probability channels: the per-channel regression
    assert torch.equal(dense_output(values * 0.5, values), regression(values * 0.5, values))


# --------------------------------------------------------------------------------------------- scratch


def test_reinitialize_resets_weights_and_bn_stats() -> None:
    trained = tiny_resnet(4)
    model = copy.deepcopy(trained)
    reinitialize(model, seed=3)
    before, after = trained.state_dict(), model.state_dict()
    assert before.keys() == after.keys()
    for name, t in after.items():
        assert t.shape == before[name].shape, name
        if name.endswith("running_mean"):
            assert torch.equal(t, torch.zeros_like(t))
        elif name.endswith("running_var"):
            assert torch.equal(t, torch.ones_like(t))
        elif name.endswith("num_batches_tracked"):
            assert int(t) == 0
        else:
            assert not torch.equal(t, before[name]), name
    again = copy.deepcopy(trained)
    reinitialize(again, seed=3)  # seeded: the same fresh weights every time
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in after.items())


def test_scratch_reinitializes_even_with_a_stale_checkpoint(npz: Path, tmp_path: Path) -> None:
    data = load_data(str(npz), batch_size=16)
    ck = tmp_path / "ck.pt"
    # another config's checkpoint
    train(tiny_resnet(3), data.train, TrainConfig(steps=2, lr=0.5), checkpoint=ck, log=QUIET)
    fresh = tiny_resnet(3)
    reinitialize(fresh, seed=0)
    student = tiny_resnet(3)
    result = get_recovery("scratch").fit(
        student, tiny_resnet(3), data, TrainConfig(steps=1, lr=0.0), checkpoint=ck, log=QUIET
    )
    assert result.resumed_from_epoch == 0
    for (name, p), q in zip(student.named_parameters(), fresh.parameters()):  # lr 0: still the fresh weights
        assert torch.equal(p, q), name


def test_scratch_resume_keeps_the_trained_weights(npz: Path, tmp_path: Path) -> None:
    data = load_data(str(npz), batch_size=32, limit_train=64)
    config = TrainConfig(epochs=2, lr=0.1)
    reference = tiny_resnet(3)
    get_recovery("scratch").fit(reference, None, data, config, log=QUIET)
    ck = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):
        get_recovery("scratch").fit(
            tiny_resnet(3),
            None,
            dataclasses.replace(data, train=Interrupting(data.train, epoch=1)),
            config,
            checkpoint=ck,
            log=QUIET,
        )
    resumed = tiny_resnet(3)
    result = get_recovery("scratch").fit(resumed, None, data, config, checkpoint=ck, log=QUIET)
    assert result.resumed_from_epoch == 1
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in reference.state_dict().items())


# ------------------------------------------------------------------------------------------ resume


class Interrupting:
    """Wraps a BatchLoader and raises KeyboardInterrupt after `after_batches` batches of epoch `epoch`."""

    def __init__(self, loader, epoch: int, after_batches: int = 1) -> None:
        self.loader, self.stop_epoch, self.after = loader, epoch, after_batches

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator:
        for i, batch in enumerate(self.loader):
            if self.epoch == self.stop_epoch and i == self.after:
                raise KeyboardInterrupt
            yield batch


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_resume_matches_an_uninterrupted_run(npz: Path, tmp_path: Path, schedule: str) -> None:
    data = load_data(str(npz), batch_size=32, augment=True, limit_train=64)  # 2 steps per epoch
    config = TrainConfig(epochs=3, lr=0.05, schedule=schedule, seed=4)
    ck = tmp_path / "ck.pt"

    reference = tiny_resnet(3)
    ref = train(reference, data.train, config, val_loader=data.val, log=QUIET)

    with pytest.raises(KeyboardInterrupt):
        train(tiny_resnet(3), Interrupting(data.train, epoch=1), config, val_loader=data.val, checkpoint=ck, log=QUIET)
    assert torch.load(ck, weights_only=False)["epoch"] == 0  # the checkpoint after epoch 1

    resumed_model = tiny_resnet(3)  # a new process: the model is rebuilt, the checkpoint restores it
    lines: list[str] = []
    res = train(resumed_model, data.train, config, val_loader=data.val, checkpoint=ck, log=lines.append)
    assert res.resumed_from_epoch == 1 and any("resumed" in line for line in lines)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    strip = lambda hs: [{k: v for k, v in h.items() if k != "seconds"} for h in hs]  # noqa: E731
    assert strip(res.history) == strip(ref.history)
    for name, t in reference.state_dict().items():
        assert torch.equal(t, resumed_model.state_dict()[name]), name


def test_finished_run_is_not_retrained_and_a_config_change_starts_afresh(npz: Path, tmp_path: Path) -> None:
    data = load_data(str(npz), batch_size=32, limit_train=64)
    ck = tmp_path / "ck.pt"
    first = tiny_resnet(3)
    r1 = train(first, data.train, TrainConfig(epochs=2, lr=0.05), checkpoint=ck, log=QUIET)
    assert r1.resumed_from_epoch == 0

    again = tiny_resnet(3)
    r2 = train(again, data.train, TrainConfig(epochs=2, lr=0.05), checkpoint=ck, log=QUIET)
    assert r2.resumed_from_epoch == 2 and r2.history == r1.history
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())

    other = tiny_resnet(3)
    r3 = train(other, data.train, TrainConfig(epochs=2, lr=0.01), checkpoint=ck, log=QUIET)
    assert r3.resumed_from_epoch == 0 and len(r3.history) == 2
    assert r3.history[0]["lr"] != r1.history[0]["lr"]
    assert torch.load(ck, weights_only=False)["config"]["lr"] == 0.01  # the stale checkpoint is replaced

    r4 = train(tiny_resnet(3), data.train, TrainConfig(steps=3, lr=0.01), checkpoint=ck, log=QUIET)  # budget change
    assert r4.resumed_from_epoch == 0 and r4.history[-1]["steps"] == 3


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_any_short_budget_trains(npz: Path, schedule: str) -> None:
    """Smoke-test budgets: every step count from 1 to 6 (4 once crashed OneCycleLR with 0/0)."""
    data = load_data(str(npz), batch_size=48, augment=False)  # 2 steps per epoch
    for steps in range(1, 7):
        result = train(small_cnn(), data.train, TrainConfig(steps=steps, lr=0.05, schedule=schedule), log=QUIET)
        assert result.history[-1]["steps"] == steps and len(result.history) == -(-steps // 2)


def test_training_budget_is_required(npz: Path) -> None:
    data = load_data(str(npz), batch_size=32)
    with pytest.raises(EdgepruneError):
        train(small_cnn(), data.train, TrainConfig(), log=QUIET)
    with pytest.raises(EdgepruneError):
        train(small_cnn(), data.train, TrainConfig(steps=1, schedule="linear"), log=QUIET)


# ------------------------------------------------------------------------------------------- CLI


def test_compress_train_cli(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt" / "m.pt"
    rc, stdout, err = run_cli(
        ["train", "--arch", TINY_ARCH, "--data", npz, "--steps", "5", "--batch-size", "32", "--out", out]
    )
    assert rc == 0, err
    model = tiny_resnet(3)
    model.load_state_dict(torch.load(out, map_location="cpu", weights_only=True))
    recipe = json.loads(out.with_suffix(".json").read_text())
    assert recipe["arch"] == TINY_ARCH and recipe["num_classes"] == 3
    assert 0.0 <= recipe["test_metric"] <= 1.0 and recipe["test_metric"] == pytest.approx(
        top1(model, load_data(str(npz)).val)
    )
    assert (
        recipe["history"]
        and recipe["history"][-1]["steps"] == 5
        and recipe["epochs_run"] == len(recipe["history"]) == 2
    )
    assert recipe["environment"]["versions"]["torch"] and recipe["config"]["processes"] == 1
    assert recipe["data"]["num_classes"] == 3 and recipe["input_shape"] == [1, 3, 16, 16]
    assert "test top1" in stdout


def bn_after_pool(num_classes: int = 10) -> nn.Module:
    """A factory for `--arch tests.test_recovery:bn_after_pool`: in train mode, BatchNorm on 1x1 maps
    (like resnet18's last stage on 32x32 images), which a batch of one cannot run in train mode."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.BatchNorm2d(8),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def test_compress_train_cli_probe_leaves_the_model_alone(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    rc, _, err = run_cli(
        [
            "train",
            "--arch",
            "tests.test_recovery:bn_after_pool",
            "--data",
            npz,
            "--steps",
            "3",
            "--batch-size",
            "32",
            "--out",
            out,
        ]
    )
    assert rc == 0, err
    assert int(torch.load(out, weights_only=True)["2.num_batches_tracked"]) == 3  # the training steps, nothing else


def test_compress_train_cli_errors(npz: Path, tmp_path: Path) -> None:
    assert_one_line_error(*run_cli(["train", "--arch", TINY_ARCH, "--steps", "1", "--out", tmp_path / "m.pt"])[::2])
    line = assert_one_line_error(
        *run_cli(
            [
                "train",
                "--arch",
                TINY_ARCH,
                "--data",
                npz,
                "--num-classes",
                "2",
                "--steps",
                "1",
                "--out",
                tmp_path / "m.pt",
            ]
        )[::2]
    )
    assert "3 classes" in line and not (tmp_path / "m.pt").exists()
    for arch in ("no_such_module_xyz:f", ":f", ".relative:f"):
        line = assert_one_line_error(
            *run_cli(["train", "--arch", arch, "--data", npz, "--steps", "1", "--out", tmp_path / "m.pt"])[::2]
        )
        assert arch in line


@pytest.mark.parametrize("where", ["below a file", "proc", "permission denied"])
def test_compress_train_into_a_folder_it_cannot_write(
    npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """One line and exit 2 before training, not an internal error when the first checkpoint is
    written. Tests run as root, whom chmod does not stop: a path below a file, /proc (where nobody
    creates files) and a PermissionError as an unprivileged user meets it."""
    from edgeprune.pipeline import training

    (tmp_path / "afile").write_text("mine\n")
    out = {
        "below a file": tmp_path / "afile" / "m.pt",
        "proc": Path("/proc/edgeprune-train/m.pt"),
        "permission denied": tmp_path / "locked" / "m.pt",
    }[where]
    if where == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc")
    if where == "permission denied":

        def denied(**_: object) -> tuple[int, str]:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(training.tempfile, "mkstemp", denied)
    trained: list[object] = []
    monkeypatch.setattr(training, "train", lambda *a, **k: trained.append(a))
    line = assert_one_line_error(
        *run_cli(["train", "--arch", TINY_ARCH, "--data", npz, "--steps", "1", "--out", out])[::2]
    )
    assert f"--out {out}" in line and not trained
    assert (
        ("is a file" in line and "pick another --out" in line)
        if where == "below a file"
        else "pick a folder you can write to" in line
    )
    if where == "permission denied":
        assert "(Permission denied)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.fixture(scope="module")
def pipeline_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pipe")
    torch.save(tiny_resnet(), d / "tiny.pt")
    return {
        "model": d / "tiny.pt",
        "npz": learnable_npz(d / "d32.npz", n_train=64, n_test=32, size=32, classes=10),
        "wide": learnable_npz(d / "wide.npz", n_train=16, n_test=8, size=32, classes=12),
        "dir": d,
    }


def test_pipeline_with_data_and_distill(pipeline_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    # pruned, not int8 alone
    rc, _stdout, err = run_cli(
        [
            pipeline_files["model"],
            "--budget",
            "60%",
            "--input-shape",
            "1x3x32x32",
            "--data",
            pipeline_files["npz"],
            "--recover",
            "distill",
            "--steps",
            "3",
            "--precision",
            "fp32",
            "--out",
            out,
            *FAST,
        ]
    )
    assert rc in (0, 1), err
    rep = json.loads((out / "report.json").read_text())
    acc = rep["accuracy"]
    assert acc["metric"] == "top1"
    for key in ("baseline", "pruned", "recovered"):
        assert 0.0 <= acc[key] <= 1.0, acc
    rec = rep["recovery"]
    assert rec["method"] == "distill" and rec["processes"] == 1 and rec["history"][-1]["steps"] == 3
    assert rec["final_metric"] == acc["recovered"] and rec["config"]["steps"] == 3
    assert rep["data"]["num_classes"] == 10 and rep["data"]["input_shape"] == [3, 32, 32]
    md = (out / "report.md").read_text()
    assert "## Accuracy" in md and "distill" in md
    # with --data under a latency budget, the default search prices widths by the latency table
    assert (
        rep["search"]["guide"] == "lambda"
        and rep["search"]["cost"] == "latency_table"
        and "latency_table" in rep["timings_s"]
    )
    assert "per-layer table timed on the target" in md
    # the published model is the recovered one: its accuracy is the one reported
    data = load_data(str(pipeline_files["npz"]))
    pruned = torch.load(out / "model.pt", weights_only=False)
    assert not pruned.training  # published for inference, like the model it came from
    assert top1(pruned, data.val) == pytest.approx(acc["recovered"])
    sd = torch.load(out / "state_dict.pt", weights_only=True)
    assert all(torch.equal(v, sd[k]) for k, v in pruned.state_dict().items())


def test_pipeline_publishes_the_best_weights_and_names_the_epoch(
    pipeline_files: dict[str, Path], tmp_path: Path
) -> None:
    """At a rate far past any that trains, the published model is no worse on the held-out metric
    than the pruned one it started from, and the report names the epoch kept and the optimiser."""
    out = tmp_path / "out"
    args = [pipeline_files["model"], "--budget", "60%", "--input-shape", "1x3x32x32", "--data", pipeline_files["npz"]]
    rc, _stdout, err = run_cli([*args, "--epochs", "3", "--lr", "1e6", "--precision", "fp32", "--out", out, *FAST])
    assert rc in (0, 1), err
    rep = json.loads((out / "report.json").read_text())
    acc, rec = rep["accuracy"], rep["recovery"]
    assert acc["recovered"] >= acc["pruned"] and rec["kept"]["metric"] == acc["recovered"]
    assert rec["config"]["optimizer"] == "sgd" and rec["config"]["keep_best"]
    pruned = torch.load(out / "model.pt", weights_only=False)
    assert top1(pruned, load_data(str(pipeline_files["npz"])).val) == pytest.approx(acc["recovered"])
    md = (out / "report.md").read_text()
    assert f"Kept: {rec['kept']['why']}" in md and "SGD with Nesterov momentum" in md


def test_pipeline_recover_without_data_is_refused(pipeline_files: dict[str, Path], tmp_path: Path) -> None:
    line = assert_one_line_error(
        *run_cli(
            [
                pipeline_files["model"],
                "--budget",
                "60%",
                "--input-shape",
                "1x3x32x32",
                "--recover",
                "finetune",
                "--out",
                tmp_path / "out",
                *FAST,
            ]
        )[::2]
    )
    assert "--data" in line


def test_pipeline_labels_beyond_outputs_are_refused_before_training(
    pipeline_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    line = assert_one_line_error(
        *run_cli(
            [
                pipeline_files["model"],
                "--budget",
                "60%",
                "--input-shape",
                "1x3x32x32",
                "--data",
                pipeline_files["wide"],
                "--steps",
                "2",
                "--out",
                out,
                *FAST,
            ]
        )[::2]
    )
    assert "12 classes" in line and "10" in line
    assert not (out / "work" / "baseline.json").exists() and not (out / "work" / "recover_checkpoint.pt").exists()
    assert not (out / "report.json").exists()


def test_pipeline_image_size_mismatch_is_refused(pipeline_files: dict[str, Path], tmp_path: Path) -> None:
    small = learnable_npz(tmp_path / "small.npz", n_train=8, n_test=4, size=16)
    line = assert_one_line_error(
        *run_cli(
            [
                pipeline_files["model"],
                "--budget",
                "60%",
                "--input-shape",
                "1x3x32x32",
                "--data",
                small,
                "--steps",
                "2",
                "--out",
                tmp_path / "out",
                *FAST,
            ]
        )[::2]
    )
    assert "3x16x16" in line


def test_a_diverging_recovery_keeps_the_starting_weights(npz: Path) -> None:
    """A loss that climbs away from the labels (gradient ascent: a recovery that can only make the
    model worse) never beats the starting weights on the held-out metric: those are what the model
    holds at the end, training stops after `patience` epochs, and the result says so."""
    data = load_data(str(npz), batch_size=16)
    model = small_cnn()
    get_recovery("finetune").fit(model, model, data, TrainConfig(epochs=4, lr=0.05), log=QUIET)  # a trained start
    start = copy.deepcopy(model.state_dict())
    before = top1(model, data.val)
    lines: list[str] = []

    def ascent(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = m(x)
        return -F.cross_entropy(logits, y), logits

    config = TrainConfig(epochs=6, lr=1.0, keep_best=True, patience=2)
    result = train(model, data.train, config, ascent, data.val, top1, log=lines.append)
    assert before > 0.6 and all(h["val_metric"] < before for h in result.history)  # it did diverge
    assert result.kept is not None and result.kept["epoch"] == 0 and result.kept["metric"] == before
    assert len(result.history) == 2 and result.kept["stopped_early"]  # patience 2: stopped after two epochs
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    assert result.final_metric == top1(model, data.val) == before
    assert any("kept the starting weights" in line and "stopped after 2 epochs" in line for line in lines), lines


def test_keep_best_keeps_the_best_epoch_and_survives_a_resume(npz: Path, tmp_path: Path) -> None:
    """Each epoch's metric is offered; the best one (a later tie included) is kept, and a resumed
    run knows what the interrupted one had kept."""
    data = load_data(str(npz), batch_size=16)
    config = TrainConfig(epochs=4, lr=0.05, keep_best=True)
    model = small_cnn()
    result = get_recovery("finetune").fit(model, small_cnn(), data, config, log=QUIET)
    metrics = [h["val_metric"] for h in result.history]
    assert result.kept is not None and result.kept["metric"] == max(metrics)
    assert result.kept["epoch"] == max(i + 1 for i, m in enumerate(metrics) if m == max(metrics))
    assert top1(model, data.val) == result.kept["metric"]
    # interrupted after 2 epochs (a checkpoint of a 2-epoch run is not resumed by a 4-epoch one: the
    # total differs), so resume the same config from its own checkpoint after killing it mid-way
    ckpt = tmp_path / "ckpt.pt"
    first = small_cnn()
    calls = {"n": 0}

    def metric(m: nn.Module, loader: object) -> float:
        calls["n"] += 1
        if calls["n"] == 4:  # the start, epochs 1 and 2, then stop during epoch 3's evaluation
            raise KeyboardInterrupt
        return top1(m, loader)  # type: ignore[arg-type]

    with pytest.raises(KeyboardInterrupt):
        get_recovery("finetune").fit(first, small_cnn(), data, config, metric=metric, checkpoint=ckpt, log=QUIET)
    resumed_model = small_cnn()
    resumed = get_recovery("finetune").fit(resumed_model, small_cnn(), data, config, checkpoint=ckpt, log=QUIET)
    assert resumed.resumed_from_epoch == 2 and resumed.kept is not None
    everything = [h["val_metric"] for h in resumed.history]
    assert resumed.kept["metric"] == max([*everything, top1(small_cnn(), data.val)])


def test_attention_models_and_scale_free_losses_recover_with_adamw_and_cnns_with_sgd() -> None:
    from edgeprune.pipeline.recovery import optimizer_for

    encoder = nn.Sequential(nn.Linear(8, 8), nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), nn.LayerNorm(8))
    distill = get_recovery("distill")
    a = optimizer_for(encoder, distill, None)
    assert a.optimizer == "adamw" and a.lr == pytest.approx(1e-4) and "attention" in a.why
    assert optimizer_for(encoder, distill, 0.003).lr == 0.003  # --lr sets the rate, not the optimiser
    c = optimizer_for(tiny_resnet(), distill, None)
    assert c.optimizer == "sgd" and c.lr == distill.default_lr
    # a CNN whose recovery loss is scale-free (a detector distilled without labels) trains with AdamW too
    d = optimizer_for(tiny_resnet(), distill, None, scale_free=True)
    assert d.optimizer == "adamw" and d.lr == pytest.approx(3e-3) and "without labels" in d.why
    assert optimizer_for(encoder, distill, None, scale_free=True).lr == pytest.approx(1e-4)
    # a CNN with layer norms somewhere (ConvNeXt-style heads beside batch norm) stays on SGD
    mixed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(4 * 30 * 30))
    assert optimizer_for(mixed, distill, None).optimizer == "sgd"
