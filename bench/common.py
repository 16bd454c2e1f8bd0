"""What every benchmark result file carries: the code it ran, the machine, the versions."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgeprune import __version__, environment  # noqa: E402


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
