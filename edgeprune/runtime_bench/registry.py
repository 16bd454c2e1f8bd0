"""Runtime names (``ort-cpu``, ...) mapped to `Runtime` classes.

A runtime registers itself with `@register` in its own module; `runtime_bench/__init__.py`
imports that module. Adding a runtime is therefore one file plus one import line, and callers
(CLI, Target, search) only ever go through `get_runtime`.
"""
from __future__ import annotations

import inspect
from typing import Any, TypeVar

from edgeprune.errors import EdgepruneError
from edgeprune.runtime_bench.base import Runtime

R = TypeVar("R", bound=type[Runtime])

_RUNTIMES: dict[str, type[Runtime]] = {}


def register(cls: R) -> R:
    """Class decorator: make `cls` reachable as `get_runtime(cls.name)`."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} has no `name`; set one before registering it")
    known = _RUNTIMES.get(cls.name)
    if known is not None and known is not cls:
        raise TypeError(f"runtime name {cls.name!r} is taken by {known.__qualname__}")
    _RUNTIMES[cls.name] = cls
    return cls


def runtime_names() -> list[str]:
    return sorted(_RUNTIMES)


def get_runtime(name: str, threads: int = 1, **options: Any) -> Runtime:
    """A configured runtime; an unknown name or option is a user error, reported as one line."""
    cls = _RUNTIMES.get(name)
    if cls is None:
        raise EdgepruneError(f"unknown runtime {name!r}; known runtimes: {', '.join(runtime_names())}")
    try:
        # Bind first so a mistyped option reads as a user error, not a TypeError from inside __init__.
        inspect.signature(cls).bind(threads=threads, **options)
    except TypeError as e:
        raise EdgepruneError(f"runtime {name!r} does not accept options {sorted(options)}: {e}") from e
    return cls(threads=threads, **options)
