"""The allowed range of every numeric option, stated once.

The CLI checks each option against its `Bound` while parsing (and prints the range in --help), and
`Settings` checks the same bounds for the Python API, so a zero thread count or a negative
tolerance is refused with one line naming the option before any work starts, instead of ending in
an internal error or a search that "found no candidate".
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from edgeprune.errors import EdgepruneError


@dataclasses.dataclass(frozen=True)
class Bound:
    """A closed or open interval of ints or floats; `None` leaves a side unbounded."""

    kind: type = int
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        """e.g. 'an integer >= 1', 'a number in (0.03, 1)' (used in --help and in every error)."""
        noun = "an integer" if self.kind is int else "a number"
        if self.lo is not None and self.hi is not None:
            return f"{noun} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{noun} {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{noun} {'<' if self.hi_open else '<='} {self.hi:g}"
        return noun

    def contains(self, value: object) -> bool:  # anything a user or the API may pass
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (self.kind is int and not isinstance(value, int))
        ):
            return False
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def check(self, option: str, value: float | None) -> None:
        """Raise the one-line error for `option` unless `value` is None (unset) or in range."""
        if value is not None and not self.contains(value):
            raise EdgepruneError(f"{option} {value!r}: must be {self.describe()}")

    def parser(self) -> _BoundType:
        """An argparse `type=` that converts and checks (its error names the range)."""
        return _BoundType(self)


class _BoundType:
    """argparse calls `type(text)`; an ArgumentTypeError's text becomes the option's error."""

    def __init__(self, bound: Bound) -> None:
        self.bound = bound
        self.__name__ = self.bound.describe()  # argparse names the type in some messages

    def __call__(self, text: str) -> float:
        try:
            value = self.bound.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.bound.describe()}") from None
        if not self.bound.contains(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {self.bound.describe()}")
        return value


def count(hi: int | None = None) -> Bound:
    """A count of at least one (threads, repeats, epochs, batch size, ...)."""
    return Bound(int, 1, hi)


#: the most a measurement may ask for (the remote agent refuses more, too)
MAX_THREADS, MAX_WARMUP, MAX_REPEATS = 256, 10_000, 100_000
THREADS = count(MAX_THREADS)
WARMUP = count(MAX_WARMUP)
REPEATS = count(MAX_REPEATS)
POSITIVE = Bound(float, 0, None, lo_open=True)
NON_NEGATIVE = Bound(float, 0)
FRACTION = Bound(float, 0, 1)
