"""Pruning methods, one file each, registered by name (`--method NAME`)."""

from edgeprune.pipeline.prune.methods import l1, lasso, thinet  # noqa: F401  (registration)
from edgeprune.pipeline.prune.methods.base import Goal, Importance, Scores, get_method, method_names, register

__all__ = ["Goal", "Importance", "Scores", "get_method", "method_names", "register"]
