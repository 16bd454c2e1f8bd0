"""What every benchmark result file carries: the code it ran, the machine, the versions."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from edgeprune import __version__, environment, models  # noqa: E402
from edgeprune.assets import asset  # noqa: E402
from edgeprune.pipeline.measure import TargetMeasurer  # noqa: E402


def git_info() -> dict[str, Any]:
    """The code these numbers were measured with: HEAD and any uncommitted package files."""
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"), "dirty_package_files": git("status", "--porcelain", "edgeprune").splitlines()}


def header(name: str) -> dict[str, Any]:
    return {"benchmark": name, "edgeprune": __version__, "environment": environment.describe(), "git": git_info()}


def trained(arch: str) -> torch.nn.Module:
    """A CIFAR-10 checkpoint trained by `compress train` and shipped in edgeprune/assets."""
    model = models.create(arch, num_classes=10)
    model.load_state_dict(torch.load(asset(f"{arch}_cifar10.pt"), map_location="cpu", weights_only=True))
    return model.eval()


def latency_ratio(measurer: TargetMeasurer, base: torch.nn.Module, model: torch.nn.Module, tag: str) -> dict[str, Any]:
    """model / baseline median latency, timed interleaved in one run (BENCHMARKING.md)."""
    pair = [measurer.load(*measurer.export(base, measurer.work_dir / f"{tag}_base.onnx")),
            measurer.load(*measurer.export(model, measurer.work_dir / f"{tag}.onnx"))]
    b, m = measurer.interleaved(pair)
    return {"ratio": m.median / b.median, "baseline_ms": b.to_dict(), "model_ms": m.to_dict()}
