"""`Stages`: how the pipeline runs one named stage (resumed when an earlier run finished it, else
computed and saved in the run directory; measuring stages on rank 0 only and broadcast; each
logged and timed), and `Stages.prefixed` for the int8 search's own stages."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from edgeprune.pipeline import distributed
from edgeprune.pipeline.rundir import RunDir

Progress = Callable[[str], None]


class Stages:
    """Runs a named stage of the pipeline: resumed when a previous run finished it, else computed
    and saved (RunDir); measuring stages run on rank 0 only and are broadcast. Logs and times each."""

    def __init__(self, run: RunDir, ctx: distributed.DistContext, log: Progress) -> None:
        self.run, self.ctx, self.log = run, ctx, log
        self.timings: dict[str, float] = {}
        #: a stage run inside another (the sensitivity map inside the search) -> that stage: its
        #: seconds are part of the other's too, so a sum of the run's time counts only stages without one
        self.within: dict[str, str] = {}
        self._running: list[str] = []

    def __call__(
        self,
        name: str,
        fn: Callable[[], dict[str, Any]],
        everywhere: bool = False,
        key: dict[str, Any] | None = None,
        kept_as: str | None = None,
    ) -> dict[str, Any]:
        """With `key`, the result is kept across runs whose settings differ but not in `key`
        (RunDir.kept), under `kept_as` when given (another stage's name that computes the same)."""
        t0 = time.perf_counter()
        self.log(f"[{name}] ...")
        if self._running:
            self.within[name] = self._running[-1]
        self._running.append(name)
        store = (lambda: self.run.stage(name, fn)) if key is None else (lambda: self.run.kept(kept_as or name, key, fn))
        try:
            if everywhere or not self.ctx.active:
                result, resumed = store()
            else:
                result, resumed = distributed.rank0_then_broadcast(self.ctx, store)
        finally:
            self._running.pop()
        self.timings[name] = round(time.perf_counter() - t0, 3)
        where = self.run.path(name + ".json") if key is None else self.run.out / "cache"
        self.log(f"[{name}] {'resumed from ' + str(where) if resumed else 'done'} ({self.timings[name]:.1f}s)")
        return result

    def prefixed(self, prefix: str) -> Callable[..., dict[str, Any]]:
        """These stages under names that start with `prefix`, so a second search in the same run
        (with int8 candidates) keeps its own results beside the first's. A kept stage (with `key`)
        keeps its name: its key says what it depends on, so the first search's result serves the
        second when the key is the same (the sensitivity map, 60 s on a ResNet-56, does not depend
        on the precision the candidates are measured at; what is measured has it in its key)."""

        def run(
            name: str, fn: Callable[[], dict[str, Any]], everywhere: bool = False, key: dict[str, Any] | None = None
        ) -> dict[str, Any]:
            return self(prefix + name, fn, everywhere, key, kept_as=name)

        return run
