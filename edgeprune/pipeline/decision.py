"""Over or under the budget: a verdict from rounds timed interleaved with the baseline, repeated
until a confidence interval decides.

Every latency verdict edgeprune gives (each search candidate and the final model) comes from here,
so all use one rule:

- **Rounds.** The candidate and the reference (the unpruned baseline, for relative budgets) are
  timed in short alternating chunks (A B, B A, A B, ...). A round's figure is the candidate's
  median over the reference's median in that round (or the candidate's median alone for an
  absolute budget): whatever else the machine did in that round slowed both alike. A baseline
  timed earlier is never used.
- **Waiting for the CPU.** Each run also records the CPU time this process spent on it. A round in
  which the wall time exceeds that CPU time by more than `PREEMPTED` waited for a CPU another
  process held; such a round is judged on CPU time when the runtime computes on this process's
  one thread (`Runtime.cpu_time_is_latency`): preemption cannot inflate that, and on a quiet round
  the two agree (measured here within 0.1 %). Measured on this 2-core machine with one busy process
  per core: ResNet-20's wall-time ratio read 0.655 against 0.667 quiet, its CPU-time ratio 0.662,
  and the per-round spread of a 224x224 MobileNetV2's ratio fell from 7-10 % to 1.4-2 %.
- **Confidence.** The estimate is the median of the round figures, with the distribution-free
  interval of a median from order statistics (`median_interval`, at least `CONFIDENCE`): a few
  rounds hit by a burst of load move it little. The verdict is "under" when the whole interval
  lies under the threshold, "over" when it lies above, and otherwise more rounds are timed, in
  batches of `ROUNDS`, up to `MAX_ROUNDS`; then it is "undecided" (a model at the budget within
  the machine's resolution, or a machine too noisy to tell).
- **Giving up early** (`give_up`, for search candidates only). A candidate still open after
  `2 x ROUNDS` rounds, its interval no wider than the search's window (`give_up`, relative: a
  wider one is the machine's noise, which the search judges on a full decision), whose interval
  narrowed as the square root of the rounds left would narrow it would still straddle the line at
  `MAX_ROUNDS`, is "undecided" at once: a search treats an
  undecided candidate as over the budget and moves on, so the last rounds only cost time. On a
  BERT-base (90 ms a run) four candidates within 1-2 % of the budget took 40 rounds (about two
  minutes) each to end undecided. The final verdict never gives up early: it is what the user reads.
- **Busy machine.** When other processes used the CPU during a batch (a round waited, or they
  used over `NOISY_BUSY` of the CPUs), no verdict is given before `2 x ROUNDS` rounds. When at
  least `WAITED` of the rounds waited for a CPU (another process competed for this one), "under"
  also needs the interval to clear the threshold by `BUSY_MARGIN`: contention biases a ratio, not
  only spreads it (beside other users' jobs one 224x224 MobileNetV2 plan read 0.333 with 16 of 20
  rounds waiting, and 0.347 on the next, quiet, decision; a ResNet-20's wall-clock ratio read 1.8 %
  low beside a CPU hog). The decision records how busy it was; the report says so.
- **Host states** (`fast_reference`: the fastest median the run timed the baseline at; given to a
  final verdict timed again against the search's, final.py). This host switches, for seconds to
  minutes, into a state in which every inference takes a fixed extra time, the reference's too
  (ResNet-20: 0.66 -> 0.87 ms): interleaving cannot cancel an addition, and a small model's ratio
  moves with it (a demo plan 0.47 -> 0.56, in 2-second passes alternating between the states; one
  final timing mixing them read 0.52 in [0.46, 0.54] after 40 rounds and stopped the demo "too
  noisy"). A round whose reference ran over `STATE_SHIFT` slower than that fastest is left out once
  `ROUNDS` rounds in the fast state are in (up to `2 x MAX_ROUNDS` rounds in all); with fewer, every
  round counts, as before. The decision says how many rounds it left out. Under noise without
  states the rule keeps the rounds whose reference ran fast, which biases a ratio up (toward
  "over", away from a wrong "under"), so the search does not use it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.runtime_bench.base import NOISY_BUSY, LatencyStats, Runtime

#: rounds per batch: the interval of a median needs at least 6
ROUNDS = 10
#: the most rounds one decision times before it says "undecided"
MAX_ROUNDS = 40
#: the interval's coverage
CONFIDENCE = 0.95
#: a round whose wall time exceeds the process's CPU time by more than this fraction waited for a CPU
PREEMPTED = 0.05
#: how far under the threshold a busy decision's interval must end to count as "under"
BUSY_MARGIN = 0.03
#: the share of rounds that waited for a CPU from which a decision counts as contended (BUSY_MARGIN)
WAITED = 0.25
#: under `give_up`, the interval is projected to `MAX_ROUNDS` this much narrower than 1/sqrt(rounds)
#: makes it: an order-statistic interval narrows in steps, and at 1.0 a simulated search (ratios
#: 0-4 % from the line, per-run noise 3-8 %) gave up 30 of 420 decisions that 40 rounds decided,
#: at 0.6 9 of them, still saving 23 % of all rounds
GIVE_UP_SLACK = 0.6
#: the fewest runs of each model per round: the median of fewer is at the mercy of one preemption
MIN_CHUNK = 8
#: a round whose reference ran this much slower than the fastest the run has timed it was timed in
#: the host's slow state (module docstring, "Host states")
STATE_SHIFT = 0.15

UNDER, OVER, UNDECIDED = "under", "over", "undecided"


class TooNoisy(EdgepruneError):
    """The machine's noise is wider than the window the search must land in: no verdict can be trusted."""


@dataclasses.dataclass(frozen=True)
class Decision:
    """Where a model lies against a threshold: the rounds' median, its interval, and the verdict."""

    verdict: str  # UNDER | OVER | UNDECIDED
    estimate: float  # median round figure: ratio to the reference (relative) or milliseconds
    low: float
    high: float
    threshold: float
    rounds: int
    cpu_rounds: int  # rounds judged on CPU time: the process waited for a CPU in them
    busy: float  # share of the host's CPUs other processes used during the rounds
    other_cpu_s: float  # CPU seconds other processes used during the rounds
    relative: bool
    margin: float = 0.0  # how far under the threshold "under" needed the interval to end (busy: BUSY_MARGIN)
    slow_rounds: int = 0  # rounds left out: timed in the host's slow state (`fast_reference`)

    @property
    def resolution(self) -> float:
        """Half the interval's width, relative to the estimate: what the machine could resolve."""
        return (self.high - self.low) / (2 * self.estimate) if self.estimate > 0 else math.inf

    @property
    def was_busy(self) -> bool:
        return self.cpu_rounds > 0 or self.busy > NOISY_BUSY

    def describe(self) -> str:
        unit = "" if self.relative else " ms"
        return (
            f"{self.estimate:.4g}{unit} in [{self.low:.4g}, {self.high:.4g}] ({CONFIDENCE:.0%}, {self.rounds} "
            f"interleaved rounds{f', {self.cpu_rounds} on CPU time' if self.cpu_rounds else ''}"
            f"{f', {self.slow_rounds} in the slow state left out' if self.slow_rounds else ''})"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"resolution": self.resolution, "was_busy": self.was_busy}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def too_noisy(d: Decision, what: str) -> TooNoisy:
    """The one-line error for a decision the machine's noise left open."""
    unit = "x the baseline" if d.relative else "ms"
    margin = f" (busy: it must end {d.margin:.0%} under it)" if d.margin else ""
    return TooNoisy(
        f"machine too noisy to decide: {what} measured {d.estimate:.4g} {unit}, between {d.low:.4g} and {d.high:.4g} "
        f"after {d.rounds} interleaved rounds (+-{d.resolution:.1%}), against the budget {d.threshold:.4g}{margin}; "
        f"other processes used {d.busy:.0%} of the CPUs; re-run on a quieter "
        "machine (the same command resumes where it stopped)"
    )


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """The median of `values` and a distribution-free interval for it: the k-th smallest and k-th
    largest value, k the largest with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. Infinite
    bounds when n is too small for that coverage (n < 6 at 95 %)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n == 0:
        return math.nan, -math.inf, math.inf
    tail, k, below = (1.0 - confidence) / 2, 0, 0.0
    while k < n // 2:
        below += math.comb(n, k) / 2.0**n  # P(X <= k)
        if below > tail:
            break
        k += 1
    median = float(np.median(x))
    return (median, float(x[k - 1]), float(x[n - k])) if k > 0 else (median, -math.inf, math.inf)


def _hopeless(
    estimate: float, low: float, high: float, threshold: float, margin: float, rounds: int, max_rounds: int
) -> bool:
    """Whether the interval `[low, high]` of `rounds` rounds, narrowed as 1/sqrt(rounds) up to
    `max_rounds` (and by `GIVE_UP_SLACK` more), would still reach across the line its estimate
    must clear."""
    shrink = math.sqrt(rounds / max_rounds) * GIVE_UP_SLACK
    under_line = threshold * (1.0 - margin)
    if estimate < under_line:
        return estimate + (high - estimate) * shrink >= under_line
    if estimate > threshold:
        return estimate - (estimate - low) * shrink <= threshold
    return True  # between the two lines: no number of rounds moves the estimate out


def _figure(stats: LatencyStats, statistic: str, on_cpu: bool) -> float:
    runs = stats.cpu_ms if on_cpu else stats.runs_ms
    return float(np.percentile(runs, 90) if statistic == "p90" else np.median(runs))


def _waited(chunks: Sequence[LatencyStats]) -> bool:
    """Whether the process waited for a CPU during these chunks (wall time well over its CPU time)."""
    if not all(c.cpu_ms for c in chunks):
        return False
    wall, cpu = sum(sum(c.runs_ms) for c in chunks), sum(sum(c.cpu_ms) for c in chunks)
    return wall - cpu > PREEMPTED * wall


def decide(
    runtime: Runtime,
    candidate: Any,
    inputs: Sequence[np.ndarray],
    threshold: float,
    reference: Any = None,
    relative: bool = True,
    statistic: str = "median",
    warmup: int = 10,
    chunk: int = 5,
    max_rounds: int = MAX_ROUNDS,
    reference_inputs: Sequence[np.ndarray] | None = None,
    give_up: float | None = None,
    fast_reference: float | None = None,
) -> tuple[Decision, LatencyStats, LatencyStats | None]:
    """Time the loaded `candidate` session (and `reference`, alternating) in rounds of `chunk` runs
    each until the interval of the median round figure lies on one side of `threshold` (module
    docstring). Returns the decision and each session's pooled runs (of the rounds judged).
    `relative`: a round's figure is the candidate's statistic over the reference's, else the
    candidate's own (ms).
    `reference_inputs`: the reference's own inputs where they differ (a decoder's cache has as
    many heads as the model it feeds). `give_up`: stop "undecided" once more rounds could not
    decide, for an interval at most this wide (relative half-width; module docstring).
    `fast_reference`: the fastest median the run has timed the reference at (ms); rounds in the
    host's slow state are left out once `ROUNDS` fast ones are in (module docstring)."""
    sessions = [candidate] if reference is None else [reference, candidate]
    feeds = [inputs] if reference is None else [reference_inputs or inputs, inputs]
    for session, feed in zip(sessions, feeds):  # warm every session before the first timed round
        runtime.warm(session, feed, warmup)
    figures: list[float] = []  # every round's
    fast: list[float] = []  # the rounds' in the host's fast state (with `fast_reference`)
    slow_above = None if fast_reference is None or reference is None else fast_reference * (1 + STATE_SHIFT)
    pooled: list[LatencyStats | None] = [None] * len(sessions)
    pooled_fast: list[LatencyStats | None] = [None] * len(sessions)  # the fast rounds' runs
    cpu_rounds, other_s, wall_s, cpus = 0, 0.0, 0.0, 0
    needed, margin = ROUNDS, 0.0
    while True:
        for _ in range(ROUNDS):
            order = range(len(sessions)) if len(figures) % 2 == 0 else reversed(range(len(sessions)))
            chunks: dict[int, LatencyStats] = {i: runtime.measure(sessions[i], feeds[i], 0, chunk) for i in order}
            on_cpu = runtime.cpu_time_is_latency and _waited(list(chunks.values()))
            cpu_rounds += on_cpu
            cand = _figure(chunks[len(sessions) - 1], statistic, on_cpu)
            figures.append(cand / _figure(chunks[0], statistic, on_cpu) if relative and reference is not None else cand)
            in_fast = slow_above is not None and _figure(chunks[0], "median", on_cpu) <= slow_above
            if in_fast:
                fast.append(figures[-1])
            for i, c in chunks.items():
                prev, prev_fast = pooled[i], pooled_fast[i]
                pooled[i] = c if prev is None else prev.merged(c)
                if in_fast:
                    pooled_fast[i] = c if prev_fast is None else prev_fast.merged(c)
                other_s += c.other_cpu_s
                wall_s += c.window_s or sum(c.runs_ms) / 1e3
                cpus = cpus or c.cpus
        busy = other_s / (wall_s * cpus) if cpus and wall_s > 0 else 0.0
        if cpu_rounds or busy > NOISY_BUSY:
            needed = 2 * ROUNDS  # a busy machine: re-measure before any verdict
        if cpu_rounds >= WAITED * len(figures):
            margin = BUSY_MARGIN  # contended: clear the threshold by the margin
        used = fast if len(fast) >= ROUNDS else figures
        estimate, low, high = median_interval(used)
        verdict = UNDER if high < threshold * (1.0 - margin) else OVER if low > threshold else UNDECIDED
        if (verdict != UNDECIDED and len(used) >= needed) or len(used) >= max_rounds or len(figures) >= 2 * max_rounds:
            break
        if (
            give_up is not None
            and len(used) >= 2 * ROUNDS
            and (high - low) / (2 * estimate) <= give_up
            and _hopeless(estimate, low, high, threshold, margin, len(used), max_rounds)
        ):
            break
    stats = [dataclasses.replace(s, warmup=warmup) for s in (pooled_fast if used is fast else pooled) if s is not None]
    decision = Decision(
        verdict,
        estimate,
        low,
        high,
        threshold,
        len(figures),
        cpu_rounds,
        busy,
        other_s,
        relative and reference is not None,
        margin,
        len(figures) - len(used),
    )
    return decision, stats[-1], (stats[0] if reference is not None else None)
