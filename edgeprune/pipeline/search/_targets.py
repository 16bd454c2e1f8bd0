"""Where the layerwise search aims next: between the measured candidates closest to the goal on
either side (`next_target`, `between`), so a candidate over and one under the budget bracket it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Point:
    """A measured candidate: its lambda, its predicted and its measured value."""

    lam: float
    predicted: float
    measured: float


def closest(points: Sequence[Point], goal: float) -> tuple[Point | None, Point | None]:
    """The measured candidates closest to `goal` from above and from below (None: no such side)."""
    over = min((p for p in points if p.measured > goal), key=lambda p: p.measured, default=None)
    under = max((p for p in points if p.measured <= goal), key=lambda p: p.measured, default=None)
    return over, under


def next_target(points: Sequence[Point], goal: float) -> float:
    """The predicted value expected to measure `goal`: interpolated between the closest measured
    candidates on either side of it, else scaled by the nearest one's measured/predicted ratio."""
    over, under = closest(points, goal)
    if over is not None and under is not None and over.measured > under.measured:
        t = (goal - under.measured) / (over.measured - under.measured)
        return under.predicted + t * (over.predicted - under.predicted)
    nearest = min(points, key=lambda p: abs(p.measured - goal))
    return nearest.predicted * goal / nearest.measured


def between(points: Sequence[Point], goal: float) -> float | None:
    """The lambda halfway (geometrically) between the closest candidates over and under `goal`;
    None without one on each side (a larger lambda prunes more: the one over has the smaller)."""
    over, under = closest(points, goal)
    if over is None or under is None or not 0.0 < over.lam < under.lam:
        return None
    return float(np.sqrt(over.lam * under.lam))
