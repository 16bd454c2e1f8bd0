"""`compress train` under torchrun: 2 processes, gloo backend, CPU.

A harness (written to tmp_path) runs the real CLI in each rank with two spies: one saves the rank's
trained state dict and history after `train()`, the other records every file the rank writes
through `edgeprune.atomic`. The test then checks that DDP kept the ranks in lockstep (identical
weights), that each rank saw its own shard, and that only rank 0 wrote outputs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny_models import tiny_resnet

REPO = Path(__file__).resolve().parents[1]

HARNESS = r"""
import os, sys
import torch
import edgeprune.atomic as atomic
import edgeprune.pipeline.training as training
from edgeprune.cli import main

spy_dir = os.environ["EDGEPRUNE_TEST_SPY_DIR"]
rank = int(os.environ["RANK"])
real_train, real_atomic_path = training.train, atomic.atomic_path

def train(model, *args, **kwargs):
    result = real_train(model, *args, **kwargs)
    torch.save({"state": model.state_dict(), "history": result.history}, os.path.join(spy_dir, f"rank{rank}.pt"))
    return result

def atomic_path(dest):
    with open(os.path.join(spy_dir, f"writes{rank}.txt"), "a") as f:
        f.write(os.path.basename(str(dest)) + "\n")
    return real_atomic_path(dest)

training.train, atomic.atomic_path = train, atomic_path
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_npz(path: Path, n_train: int = 64, n_test: int = 16, size: int = 16, classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n) % classes
        x = rng.integers(0, 90, size=(n, size, size, 3)).astype(np.uint8)
        for i, k in enumerate(y):
            x[i, :, :, k] += 150
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("ddp")
    (d / "harness.py").write_text(HARNESS)
    spy = d / "spy"
    spy.mkdir()
    out = d / "out" / "m.pt"
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        EDGEPRUNE_TEST_SPY_DIR=str(spy),
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    # 64 images, 2 ranks, batch 16: 2 steps per epoch on each rank; 4 steps = 2 epochs
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        env["MASTER_ADDR"],
        "--master_port",
        env["MASTER_PORT"],
        str(d / "harness.py"),
        "train",
        "--arch",
        "tests.tiny_models:tiny_resnet",
        "--data",
        str(make_npz(d / "d.npz")),
        "--steps",
        "4",
        "--batch-size",
        "16",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    return {"proc": proc, "out": out, "spy": spy}


def test_ddp_ranks_end_with_identical_weights(ddp_run: dict[str, object]) -> None:
    proc, spy = ddp_run["proc"], ddp_run["spy"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # type: ignore[union-attr]
    r0 = torch.load(spy / "rank0.pt", weights_only=False)  # type: ignore[operator]
    r1 = torch.load(spy / "rank1.pt", weights_only=False)  # type: ignore[operator]
    model = tiny_resnet(3)
    params = {name for name, _ in model.named_parameters()}
    assert r0["state"].keys() == r1["state"].keys() and params <= r0["state"].keys()
    # gradients are all-reduced, so parameters agree; BatchNorm statistics are given from rank 0
    # to all after each epoch, so every entry of the state dict is bit-identical across ranks
    for name, t in r0["state"].items():
        assert torch.equal(t, r1["state"][name]), name
    assert [h["val_metric"] for h in r0["history"]] == [h["val_metric"] for h in r1["history"]]
    # the ranks trained on different shards: their per-rank training losses differ
    assert [h["steps"] for h in r0["history"]] == [h["steps"] for h in r1["history"]] == [2, 4]
    assert r0["history"][0]["loss"] != r1["history"][0]["loss"]
    # and they moved away from the initialization
    assert not torch.equal(r0["state"]["fc.weight"], model.state_dict()["fc.weight"])


def test_only_rank0_writes_and_the_recipe_counts_processes(ddp_run: dict[str, object]) -> None:
    proc, spy, out = ddp_run["proc"], ddp_run["spy"], ddp_run["out"]
    assert proc.returncode == 0, proc.stderr[-3000:]  # type: ignore[union-attr]
    assert not (spy / "writes1.txt").exists()  # type: ignore[operator]
    writes = (spy / "writes0.txt").read_text().split()  # type: ignore[operator]
    assert {"m.pt", "m.json", "m.ckpt"} == set(writes)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.ckpt", "m.json", "m.pt"]  # type: ignore[union-attr]
    model = tiny_resnet(3)
    model.load_state_dict(torch.load(out, weights_only=True))
    rank0 = torch.load(spy / "rank0.pt", weights_only=False)["state"]  # type: ignore[operator]
    assert all(torch.equal(v, rank0[k]) for k, v in model.state_dict().items())
    recipe = json.loads(out.with_suffix(".json").read_text())  # type: ignore[union-attr]
    assert recipe["config"]["processes"] == 2 and recipe["epochs_run"] == 2
    assert 0.0 <= recipe["test_metric"] <= 1.0
    assert proc.stdout.count("test top1") == 1  # type: ignore[union-attr]  # one summary line: rank 0's
