"""Suite-wide settings and shared fixtures.

One intra-op thread for PyTorch: on the shared 2-core machines, two OpenMP threads competing with
a busy core run the suite's tiny training steps ~30x slower than one thread does. (Latency
measurements set their runtime's threads themselves.)

`data16` / `data32`: small learnable image sets (tests/synthetic.py) for the methods that train.
`files`: a tiny ResNet saved whole, as a state dict and scripted, and a file that is not a model
(the CLI tests).

The per-layer latency table's cross-run cache goes to a temporary folder, not the user's home.
"""

import os
import tempfile
from pathlib import Path

import pytest
import torch

from edgeprune.pipeline.data import load_data
from tests.synthetic import learnable_npz
from tests.tiny_models import tiny_resnet

os.environ.setdefault("EDGEPRUNE_CACHE_DIR", tempfile.mkdtemp(prefix="edgeprune_test_cache_"))

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data16(tmp_path_factory: pytest.TempPathFactory):
    """128 training images of 16x16, two colour classes, batches of 32."""
    path = learnable_npz(tmp_path_factory.mktemp("d") / "d.npz", n_train=128, n_test=48, classes=2)
    return load_data(str(path), batch_size=32)


@pytest.fixture(scope="module")
def data32(tmp_path_factory: pytest.TempPathFactory):
    """64 training images of 32x32, ten classes, batches of 16."""
    path = learnable_npz(tmp_path_factory.mktemp("d32") / "d.npz", n_train=64, n_test=32, size=32, classes=10)
    return load_data(str(path), batch_size=16)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    torch.save(tiny_resnet(), d / "tiny.pt")
    torch.save(tiny_resnet().state_dict(), d / "tiny_sd.pt")
    torch.jit.script(tiny_resnet()).save(str(d / "scripted.pt"))
    (d / "garbage.onnx").write_text("this is not an onnx model\n")
    return {
        "whole": d / "tiny.pt",
        "state_dict": d / "tiny_sd.pt",
        "scripted": d / "scripted.pt",
        "garbage": d / "garbage.onnx",
        "dir": d,
    }
