"""`compress check`: the CI gate, exit 0 when an .onnx is within --budget, 1 when over it."""

from __future__ import annotations

import argparse

from rich.console import Console

from edgeprune.cli._base import (
    Parser,
    common,
    existing,
    load_runtime,
    noise_note,
    subcommand,
)
from edgeprune.errors import EdgepruneError

HELP = "CI gate: exit 0 when an .onnx is within --budget, 1 when over it"


def _check_parser() -> argparse.ArgumentParser:
    p = Parser(prog="compress check", description="Fail (exit 1) when MODEL.onnx is over --budget.")
    p.add_argument("model", help="a .onnx file")
    p.add_argument(
        "--budget", required=True, help="20ms, p90<=20ms, 1.5Mparams; a relative budget (2x, 50%%) needs --baseline"
    )
    p.add_argument("--baseline", help="the reference .onnx for relative budgets (timed interleaved with MODEL)")
    p.add_argument("--input-shape", help="e.g. 1x3x224x224 (default: the shape the .onnx declares)")
    common(p)
    return p


@subcommand("check", HELP, _check_parser)
def _check(argv: list[str]) -> int:
    """CI gate: exit 0 within budget, 1 over it."""
    from edgeprune.exporters.onnx import onnx_param_count
    from edgeprune.pipeline.budget import parse_budget
    from edgeprune.pipeline.loading import parse_input_shape
    from edgeprune.pipeline.measure import check_time_bound
    from edgeprune.runtime_bench.base import interleave
    from edgeprune.runtime_bench.inputs import example_inputs_for

    a = _check_parser().parse_args(argv)
    existing(a.model)
    budget = parse_budget(a.budget)
    if budget.metric == "flops":
        raise EdgepruneError(
            "check reads FLOPs budgets from PyTorch models only; use a latency or params budget for an ONNX file"
        )
    if budget.metric == "params":
        value = float(onnx_param_count(a.model))
        ok = budget.met_by(value)
        Console().print(
            f"{a.model}: {value / 1e6:.4f} M params, budget {budget.describe()}: {'OK' if ok else 'OVER BUDGET'}"
        )
        return 0 if ok else 1
    if budget.relative and not a.baseline:
        raise EdgepruneError(f"budget {a.budget} is relative; pass --baseline BASE.onnx to compare against")
    rt = load_runtime(a.runtime, a.threads)
    shape = parse_input_shape(a.input_shape) if a.input_shape else None
    inputs = example_inputs_for(a.model, shape)
    session = rt.load(a.model)
    check_time_bound(rt, session, inputs, a.warmup, a.repeats)
    stat = "p90" if budget.statistic == "p90" else "median"
    if budget.relative:
        existing(a.baseline)
        base_s, model_s = interleave(
            rt, [rt.load(a.baseline), session], [example_inputs_for(a.baseline, shape), inputs], a.warmup, a.repeats
        )
        ratio = getattr(model_s, stat) / getattr(base_s, stat)
        ok = ratio <= budget.value
        Console().print(
            f"{a.model}: {stat} {getattr(model_s, stat):.3f} ms = {ratio:.3f} x baseline {getattr(base_s, stat):.3f} "
            f"ms (interleaved, n={model_s.n}); budget {budget.describe()}: "
            f"{'OK' if ok else 'OVER BUDGET'}{noise_note(base_s, model_s)}"
        )
        return 0 if ok else 1
    s = rt.measure(session, inputs, a.warmup, a.repeats)
    ok = budget.met_by(getattr(s, stat))
    Console().print(
        f"{a.model}: {stat} {getattr(s, stat):.3f} ms (p90 {s.p90:.3f}, n={s.n}, {rt.name}, {a.threads} thread(s)); "
        f"budget {budget.describe()}: {'OK' if ok else 'OVER BUDGET'}{noise_note(s)}"
    )
    return 0 if ok else 1
