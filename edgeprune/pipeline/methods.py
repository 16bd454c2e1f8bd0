"""Every pruning method, registered by name (`--method NAME`): the criteria that score a trained
model (`prune/methods/`) and the methods that learn what to cut (`learned/`). Ask for a method by
name here, above both, so that the learned ones are registered; the cutting core imports neither."""

from edgeprune.pipeline import learned  # noqa: F401  (registration)
from edgeprune.pipeline.prune.methods.base import METHODS, Goal, Importance, Scores, get_method, method_names, register

__all__ = ["METHODS", "Goal", "Importance", "Scores", "get_method", "method_names", "register"]
