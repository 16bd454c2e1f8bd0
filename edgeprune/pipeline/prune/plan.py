"""The `Plan`: which units (channels or attention heads) each prunable group keeps.

A plan is plain JSON and refers to groups by the stable name of their root module, so applying it
to a fresh copy of the original architecture is deterministic: it can be saved, reviewed, re-applied
to rebuild a pruned model from its state dict, or trained from scratch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from edgeprune import atomic
from edgeprune.errors import EdgepruneError

PLAN_VERSION = 1


@dataclasses.dataclass(frozen=True)
class GroupKeep:
    """The units kept in one group, as indices into the group's original units."""

    kind: str  # "channels" | "heads"
    size: int
    keep: tuple[int, ...]

    @property
    def removed(self) -> list[int]:
        kept = set(self.keep)
        return [i for i in range(self.size) if i not in kept]


@dataclasses.dataclass
class Plan:
    groups: dict[str, GroupKeep]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: residual blocks replaced by identity (module names), see blocks.py
    removed_blocks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "meta": self.meta,
            "groups": {gid: {"kind": g.kind, "size": g.size, "keep": list(g.keep)} for gid, g in self.groups.items()},
            "removed_blocks": list(self.removed_blocks),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        if d.get("version") != PLAN_VERSION or "groups" not in d:
            raise EdgepruneError(
                f"not an edgeprune plan (version {d.get('version')!r}); re-create it with this edgeprune"
            )
        groups = {
            gid: GroupKeep(kind=g["kind"], size=int(g["size"]), keep=tuple(int(i) for i in g["keep"]))
            for gid, g in d["groups"].items()
        }
        return cls(groups=groups, meta=dict(d.get("meta", {})), removed_blocks=tuple(d.get("removed_blocks", ())))

    def save(self, path: str | Path) -> None:
        atomic.write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise EdgepruneError(f"cannot read plan {path}: {err}; pass a plan.json written by edgeprune") from None
