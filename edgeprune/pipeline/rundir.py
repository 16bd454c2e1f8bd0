"""The run directory: stage artifacts that make a re-run resume, and atomic publication of results.

Stage results live in ``OUT/work/<stage>.json`` next to a ``config.json`` describing the settings
they were computed with. A re-run with the same settings reuses every finished stage and resumes at
the first missing one; different settings start the work folder afresh. The user-facing outputs in
``OUT/`` are replaced only when a run has finished, each file atomically, so a failed run leaves the
previous results intact.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from edgeprune import atomic


class RunDir:
    def __init__(self, out: str | Path, config: dict[str, Any], write: bool = True) -> None:
        """`write=False` (ranks other than 0 under torchrun) computes stages without touching disk."""
        self.out = Path(out)
        self.work = self.out / "work"
        self.config = config
        self.write = write
        if not write:
            return
        cfg_path = self.work / "config.json"
        if cfg_path.exists():
            try:
                # compare as JSON: tuples in `config` (Settings.unprunable) read back as lists
                same = json.loads(cfg_path.read_text(encoding="utf-8")) == json.loads(json.dumps(config))
            except ValueError:
                same = False
            if not same:
                shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        atomic.write_json(cfg_path, config)

    def path(self, name: str) -> Path:
        return self.work / name

    def done(self, stage: str) -> bool:
        return self.path(f"{stage}.json").exists()

    def stage(self, stage: str, compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """The stage's result: loaded when a previous run finished it, else computed and saved.

        Returns (result, resumed).
        """
        p = self.path(f"{stage}.json")
        if p.exists():
            return json.loads(p.read_text(encoding="utf-8")), True
        result = compute()
        if self.write:
            atomic.write_json(p, result)
        return result, False

    def kept(self, stage: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """Like `stage`, for results that depend on less than the whole config (a layerwise
        search's sensitivity map does not depend on the budget): kept in ``OUT/cache/`` under a
        hash of `key`, which a re-run with other settings does not wipe."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        p = self.out / "cache" / f"{stage}-{digest}.json"
        if p.exists():
            return json.loads(p.read_text(encoding="utf-8")), True
        result = compute()
        if self.write:
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json(p, result)
        return result, False

    def publish(self, files: dict[str, Path]) -> None:
        """Copy finished work files to their user-facing names in OUT/, each atomically."""
        for name, src in files.items():
            with atomic.atomic_path(self.out / name) as tmp:
                shutil.copyfile(src, tmp)
