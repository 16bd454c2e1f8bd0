"""Files shipped with edgeprune: the demo's trained checkpoint and its small CIFAR-10 subset.

See README.md in this folder for where they come from and how they were made.
"""

from __future__ import annotations

from pathlib import Path

from edgeprune.errors import EdgepruneError

ROOT = Path(__file__).resolve().parent


def asset(name: str) -> Path:
    path = ROOT / name
    if not path.is_file():
        raise EdgepruneError(f"asset {name} is missing from {ROOT}; reinstall edgeprune from a full checkout")
    return path
