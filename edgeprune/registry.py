"""Name -> class registries: how runtimes, exporters, pruning methods and recoveries plug in.

Each implementation is one file whose class registers itself with `@REGISTRY.register`; its
package's `__init__` imports the file. Adding one is therefore one file plus one import line, and
callers only ever ask a registry by name.
"""

from __future__ import annotations

import inspect
from typing import Any, Generic, TypeVar

from edgeprune.errors import EdgepruneError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, key: str = "name") -> None:
        """`kind` names what is registered in error messages; `key` is the class attribute keyed on."""
        self.kind = kind
        self.key = key
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: make `cls` reachable as `create(cls.<key>)`."""
        name = getattr(cls, self.key, "")
        if not name:
            raise TypeError(f"{cls.__qualname__} has no `{self.key}`; set one before registering it")
        known = self._classes.get(name)
        if known is not None and known is not cls:
            raise TypeError(f"{self.kind} {name!r} is taken by {known.__qualname__}")
        self._classes[name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        """The registered class itself (for its class attributes); an unknown name is a user error."""
        cls = self._classes.get(name)
        if cls is None:
            raise EdgepruneError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return cls

    def create(self, name: str, **options: Any) -> T:
        """A configured instance; an unknown name or option is a user error, reported as one line."""
        cls = self.get(name)
        try:
            # Bind first so a mistyped option reads as a user error, not a TypeError from inside __init__.
            inspect.signature(cls).bind(**options)
        except TypeError as e:
            raise EdgepruneError(f"{self.kind} {name!r} does not accept options {sorted(options)}: {e}") from None
        return cls(**options)
