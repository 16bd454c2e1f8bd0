"""noise_floor: how often could any search meet budget_hit's quiet bar on this machine?

Issue 18's quiet bar asks every row's final ratio to read in [0.95, 1.0] of the budget. The final
ratio is one decision (decision.py): a reading, with the noise any reading has here. budget_hit
times each final model a second time (`recheck`: the same two ONNX files, fresh sessions, seconds
later), so every row gives a pair of independent readings of one plan, with no selection between
them (the search chose the plan on earlier readings). Per model, over every quiet pass in
bench/results/budget_hit.json (a loaded pass's re-check runs with the hog paused, so its pairs mix
two conditions):

- sigma: the spread of one reading, from the pairs' log ratios, 1.4826 x their median absolute
  deviation / sqrt(2) (robust: a burst in one pair does not set it), and their plain standard
  deviation / sqrt(2) beside it;
- p_row: the chance that one reading of a plan whose true ratio is 0.975 of the budget (the middle
  of the bar's band: the best a search can aim at) falls in [0.95, 1.0] of it, for normal noise of
  that sigma;
- p_all: the product over the 21 rows (three budgets per model): the chance that a perfect search,
  which always lands exactly in the middle, meets the bar's ratio clause in one pass;
- selection: the median of log(first confirmation / first reading) over the candidates the searches
  confirmed. A search confirms a candidate because its first reading landed in the window, so
  those readings are the low draws of their plans' noise, and the confirmations read higher by
  about that much (where the noise is wide): what a search that aims by its readings pays.

    python bench/noise_floor.py [--results bench/results/budget_hit.json] [--out bench/results/noise_floor.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import header  # noqa: E402
from edgeprune import atomic  # noqa: E402

#: where a perfect search would put every plan, as a fraction of the budget, and the bar's band
AIM, BAND = 0.975, (0.95, 1.0)


def quiet_rows(results: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every row of the quiet passes."""
    for name, p in results["passes"].items():
        if name.startswith("quiet_at_"):
            yield from p["rows"]


def pairs(results: dict[str, Any]) -> dict[str, list[float]]:
    """Per model, log(recheck / final) of every row of the quiet passes."""
    out: dict[str, list[float]] = {}
    for r in quiet_rows(results):
        if r.get("ratio") and r.get("recheck"):
            out.setdefault(r["model"], []).append(math.log(r["recheck"]["estimate"] / r["ratio"]))
    return out


def selection(results: dict[str, Any]) -> dict[str, list[float]]:
    """Per model, log(first confirmation / first reading) of every confirmed candidate of the quiet passes."""
    out: dict[str, list[float]] = {}
    for r in quiet_rows(results):
        first: dict[int, float] = {}
        confirmed: dict[int, float] = {}
        for step in r.get("steps") or []:
            readings = confirmed if step["confirm"] else first
            readings.setdefault(step["index"], step["ratio"])
        out.setdefault(r["model"], []).extend(math.log(confirmed[i] / first[i]) for i in confirmed if i in first)
    return out


def in_band(sigma: float) -> float:
    """P(one reading of a plan at AIM of the budget lies in BAND), normal noise of `sigma` (log)."""
    lo, hi = (math.log(b / AIM) for b in BAND)
    cdf = lambda z: 0.5 * (1.0 + math.erf(z / (sigma * math.sqrt(2.0))))  # noqa: E731
    return cdf(hi) - cdf(lo)


def floor(results: dict[str, Any], budgets: int) -> dict[str, Any]:
    """The per-model table and the pass-wide chance."""
    rows: dict[str, Any] = {}
    p_all = 1.0
    chosen = selection(results)
    for model, logs in sorted(pairs(results).items()):
        x = np.asarray(logs)
        sigma = 1.4826 * float(np.median(np.abs(x - np.median(x)))) / math.sqrt(2.0)
        p_row = in_band(sigma)
        p_all *= p_row**budgets
        rows[model] = {
            "pairs": len(logs),
            "sigma": sigma,
            "sigma_sd": float(x.std(ddof=1)) / math.sqrt(2.0),
            "median_shift": float(np.median(x)),
            "p_row": p_row,
            "confirmed": len(chosen.get(model, [])),
            "selection": float(np.median(chosen[model])) if chosen.get(model) else None,
        }
    return {"models": rows, "p_all": p_all}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "budget_hit.json")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "noise_floor.json")
    a = p.parse_args()
    results = json.loads(a.results.read_text())
    budgets = len(results["budgets"])
    out = header("noise_floor") | {
        "source": str(a.results.relative_to(REPO)) if a.results.is_relative_to(REPO) else str(a.results),
        "aim": AIM,
        "band": list(BAND),
        "budgets_per_model": budgets,
        "quiet": floor(results, budgets),
    }
    print(f"a perfect search meets the band on all rows of a quiet pass with p = {out['quiet']['p_all']:.3f}")
    for model, r in out["quiet"]["models"].items():
        print(
            f"  {model:30s} {r['pairs']:3d} pairs  sigma {r['sigma']:.2%} (sd {r['sigma_sd']:.2%})  p_row "
            f"{r['p_row']:.2f}  selection {r['selection'] or 0:+.2%} over {r['confirmed']} confirmed"
        )
    atomic.write_json(a.out, out)


if __name__ == "__main__":
    main()
