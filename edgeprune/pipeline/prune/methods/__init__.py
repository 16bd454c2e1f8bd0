"""Pruning methods, one file each, registered by name (`--method NAME`)."""
from edgeprune.pipeline.prune.methods.base import Importance, Scores, get_method, method_names, register
from edgeprune.pipeline.prune.methods import l1, lasso, slimming, thinet  # noqa: F401  (registration)

__all__ = ["Importance", "Scores", "get_method", "method_names", "register"]
