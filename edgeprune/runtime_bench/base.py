"""The `Runtime` interface and the statistics every latency measurement returns.

A runtime is one file in this package implementing `Runtime`; `registry.py` maps names such as
``ort-cpu`` to them. Statistics follow ../shared/BENCHMARKING.md: warm-up, many repeats, median
and p90, the spread, and how busy the rest of the machine was while we measured.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edgeprune.errors import EdgepruneError


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Per-run latencies (ms) summarised; `runs_ms` keeps the raw data for the report."""

    median: float
    p90: float
    mean: float
    std: float
    n: int
    warmup: int
    other_cpu_s: float = 0.0  # CPU seconds other processes used during the timed loop
    runs_ms: tuple[float, ...] = ()
    cpus: int = 0  # logical CPUs of the host that measured (0: unknown)
    #: per run, the CPU time the measuring process spent (ms), parallel to `runs_ms`; empty where the
    #: runtime's own clock times the runs (CUDA events). A run whose wall time exceeds it waited for
    #: the CPU: another process had taken it (decision.py judges such rounds on CPU time)
    cpu_ms: tuple[float, ...] = ()
    #: wall seconds of the whole timed loop (0: unknown, then the runs' sum stands for it): other
    #: processes' CPU time is a share of this window, which also holds the waits between runs
    window_s: float = 0.0

    @property
    def spread(self) -> float:
        """p90/median: 1.0 is a quiet machine; above ~1.2 the number deserves a re-measure."""
        return self.p90 / self.median if self.median > 0 else float("inf")

    @property
    def busy(self) -> float:
        """The share of the measuring host's CPU capacity that other processes used while we timed."""
        timed_s = self.window_s or sum(self.runs_ms) / 1e3
        return self.other_cpu_s / (timed_s * self.cpus) if self.cpus and timed_s > 0 else 0.0

    @property
    def noise(self) -> str | None:
        """Why these figures should not be trusted as they stand, or None for a quiet measurement.

        A wide spread means some runs were much slower than the median (another process took the
        core); the p90, and any ratio of p90s, then measures the machine's load, not the model.
        The median of many runs stays usable, so a noisy measurement is flagged, not discarded."""
        reasons = []
        if self.spread > NOISY_SPREAD:
            reasons.append(f"p90/median {self.spread:.2f} > {NOISY_SPREAD:g}")
        if self.busy > NOISY_BUSY:
            reasons.append(f"other processes used {self.busy:.0%} of the CPUs > {NOISY_BUSY:.0%}")
        return "; ".join(reasons) or None

    @classmethod
    def from_runs(
        cls,
        runs_ms: Sequence[float],
        warmup: int,
        other_cpu_s: float = 0.0,
        cpus: int = 0,
        cpu_ms: Sequence[float] = (),
        window_s: float = 0.0,
    ) -> LatencyStats:
        arr = np.asarray(runs_ms, dtype=np.float64)
        return cls(
            median=float(np.median(arr)),
            p90=float(np.percentile(arr, 90)),
            mean=float(arr.mean()),
            std=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            n=int(arr.size),
            warmup=warmup,
            other_cpu_s=other_cpu_s,
            runs_ms=tuple(float(v) for v in arr),
            cpus=cpus,
            cpu_ms=tuple(float(v) for v in cpu_ms) if len(cpu_ms) == arr.size else (),
            window_s=window_s,
        )

    def merged(self, other: LatencyStats) -> LatencyStats:
        """Pool the runs of two measurements of the same model (a re-measure at the budget edge)."""
        return LatencyStats.from_runs(
            self.runs_ms + other.runs_ms,
            self.warmup + other.warmup,
            self.other_cpu_s + other.other_cpu_s,
            self.cpus or other.cpus,
            self.cpu_ms + other.cpu_ms if self.cpu_ms and other.cpu_ms else (),
            self.window_s + other.window_s if self.window_s and other.window_s else 0.0,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        """Back from `to_dict(with_runs=True)` (a stage file, a remote agent's answer)."""
        return cls.from_runs(
            d["runs_ms"],
            d["warmup"],
            d.get("other_cpu_s", 0.0),
            d.get("cpus", 0),
            d.get("cpu_ms", ()),
            d.get("window_s", 0.0),
        )

    def to_dict(self, with_runs: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["spread"] = self.spread
        d["busy"] = self.busy
        d["noise"] = self.noise
        if not with_runs:
            d.pop("runs_ms")
            d.pop("cpu_ms")
        return d


#: p90/median above this, or other processes using more than this share of the CPUs during the
#: timed loop, flags a measurement as noisy (LatencyStats.noise)
NOISY_SPREAD = 1.5
NOISY_BUSY = 0.5


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int) -> LatencyStats:
    """Time `fn` after `warmup` untimed calls; also records the CPU time other processes used, and
    per run the CPU time this process spent (its clock read outside the wall-clock interval, so the
    wall times stay those of `fn` alone).

    Runtimes whose clock is not the host's (CUDA events) implement their own loop instead.
    """
    for _ in range(warmup):
        fn()
    me = psutil.Process()
    busy0 = _busy_cpu_s()
    own0 = sum(me.cpu_times()[:2])
    runs, cpu = [], []
    start = time.perf_counter()
    for _ in range(repeats):
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        cpu.append((time.process_time() - c0) * 1e3)
        runs.append((t1 - t0) * 1e3)
    window = time.perf_counter() - start
    other = max(0.0, (_busy_cpu_s() - busy0) - (sum(me.cpu_times()[:2]) - own0))
    return LatencyStats.from_runs(runs, warmup, other, psutil.cpu_count() or 0, cpu, window)


def interleave(
    runtime: Runtime,
    sessions: Sequence[Any],
    inputs: Sequence[Sequence[np.ndarray]],
    warmup: int,
    repeats: int,
    rounds: int = 10,
) -> list[LatencyStats]:
    """Time several loaded models alternately (A B A B ...) and pool each one's runs.

    This is how two models are compared on a shared machine: whatever else runs slows both alike,
    so their ratio holds even when absolute times drift between runs.
    """
    chunk = max(1, -(-repeats // rounds))
    for session, x in zip(sessions, inputs):  # warm every session before the first timed round
        runtime.warm(session, x, warmup)
    pooled: list[LatencyStats | None] = [None] * len(sessions)
    for _ in range(rounds):
        for i, (session, x) in enumerate(zip(sessions, inputs)):
            s = runtime.measure(session, x, 0, chunk)
            prev = pooled[i]
            pooled[i] = s if prev is None else prev.merged(s)
    return [dataclasses.replace(s, warmup=warmup) for s in pooled if s is not None]


def _busy_cpu_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


class Runtime(abc.ABC):
    """A way to run an exported model and time it.

    Implementations are constructed with their settings (threads, precision) and must not raise on
    construction when their backend is missing: `available()` says why instead, so callers can
    skip with a reason.
    """

    #: registry name, e.g. "ort-cpu"
    name: str = ""
    #: the artifact format this runtime loads (matches `exporters` Artifact.format)
    artifact_format: str = "onnx"
    #: False for a runtime that measures on another machine (remote)
    on_host: bool = True
    #: the constructor option that `--runtime NAME:VALUE` sets (precision, platform, agent address)
    spec_option: str | None = None
    #: how far its outputs may be from PyTorch's (atol + rtol x max|output|) for its latency to count
    atol: float = 1e-3
    rtol: float = 1e-3
    #: one inference runs to completion on this process's threads, without waiting on a device or
    #: another host: with one thread, its CPU time is then its latency undisturbed by other processes
    cpu_bound: bool = False

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads

    @abc.abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, "") when this runtime can run here, else (False, reason a user can act on)."""

    @property
    def reduced_precision(self) -> bool:
        """Whether it computes below float32 (bf16, fp16): then its accuracy effect is measured."""
        return False

    def exporter_options(self) -> dict[str, Any]:
        """Options for the exporter of `artifact_format` (e.g. TensorRT's fp16 build flag)."""
        return {}

    def checked_path(self, artifact_path: str) -> Path:
        """The file to load, after checking this runtime can run here and the file exists
        (one-line errors for both, before any backend gets to raise its own)."""
        ok, why = self.available()
        if not ok:
            raise EdgepruneError(why)
        path = Path(artifact_path)
        if not path.is_file():
            kind = "ONNX" if self.artifact_format == "onnx" else self.artifact_format
            raise EdgepruneError(f"{path}: no such {kind} file; check the path or export the model first")
        return path

    @abc.abstractmethod
    def load(self, artifact_path: str) -> Any:
        """Load an exported model; returns a session object passed back to `run` / `measure`."""

    @abc.abstractmethod
    def run(self, session: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One inference; returns the outputs as NumPy arrays (used to verify against PyTorch)."""

    def warm(self, session: Any, inputs: Sequence[np.ndarray], n: int) -> None:
        """`n` untimed runs of what `measure` times, before rounds of it (decision.py, `interleave`):
        `run` here; a runtime whose timed call is not `run` warms what it times instead (GenAI times
        a generated token, where `run` appends a whole prompt)."""
        for _ in range(n):
            self.run(session, inputs)

    def measure(self, session: Any, inputs: Sequence[np.ndarray], warmup: int = 10, repeats: int = 50) -> LatencyStats:
        """Latency of one inference: `warmup` untimed runs, then `repeats` timed ones."""
        return time_calls(lambda: self.run(session, inputs), warmup, repeats)

    @property
    def cpu_time_is_latency(self) -> bool:
        """Whether a run's process CPU time stands for its latency when another process took the
        CPU during it: one thread, computing on this host (decision.py)."""
        return self.cpu_bound and self.on_host and self.threads == 1

    def settings(self) -> dict[str, Any]:
        """What the report records about how this runtime was configured."""
        return {"runtime": self.name, "threads": self.threads}
