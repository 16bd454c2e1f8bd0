"""`compress bench`: time an exported .onnx on one runtime, or on every runtime available here."""

from __future__ import annotations

import argparse

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeprune.cli._base import (
    Parser,
    common,
    existing,
    subcommand,
)
from edgeprune.errors import EdgepruneError

HELP = "time an exported .onnx on one runtime, or on every runtime available here (--runtime all)"


def _bench_parser() -> argparse.ArgumentParser:
    p = Parser(prog="compress bench", description="Time an exported model on a runtime (or --runtime all).")
    p.add_argument("model", help="a .onnx file")
    p.add_argument("--input-shape", help="e.g. 1x3x224x224 (default: the shape the .onnx declares)")
    common(p)
    return p


@subcommand("bench", HELP, _bench_parser)
def _bench(argv: list[str]) -> int:
    """Time an ONNX file on one runtime, or on every runtime available here (`--runtime all`)."""
    from edgeprune.pipeline.loading import parse_input_shape
    from edgeprune.pipeline.measure import check_time_bound
    from edgeprune.runtime_bench import get_runtime
    from edgeprune.runtime_bench.inputs import example_inputs_for
    from edgeprune.runtime_bench.registry import onnx_runtimes

    a = _bench_parser().parse_args(argv)
    existing(a.model)
    inputs = example_inputs_for(a.model, parse_input_shape(a.input_shape) if a.input_shape else None)
    names = onnx_runtimes() if a.runtime == "all" else [a.runtime]
    reference = None  # ort-cpu's outputs: an ONNX file alone has no PyTorch module to compare with
    t = Table(title=f"{a.model}, {a.threads} thread(s)")
    t.add_column("runtime", no_wrap=True)
    for col in ("median ms", "p90 ms", "p90/median", "n", "max diff vs ort-cpu", "note"):
        t.add_column(col, justify="right")
    settings = []
    for name in names:
        rt = get_runtime(name, threads=a.threads)
        if rt.artifact_format != "onnx":
            raise EdgepruneError(
                f"compress bench times ONNX files and {name} runs {rt.artifact_format} models; "
                f"measure on it with `compress MODEL.pt --runtime {name}`"
            )
        ok, why = rt.available()
        if not ok:
            if a.runtime != "all":
                raise EdgepruneError(f"runtime {name} cannot run here: {why}")
            t.add_row(name, "-", "-", "-", "-", "-", f"skipped: {why}")
            continue
        session = rt.load(a.model)
        outs = rt.run(session, inputs)
        if reference is None:
            reference = (
                outs if name == "ort-cpu" else get_runtime("ort-cpu").run(get_runtime("ort-cpu").load(a.model), inputs)
            )
        diff = max(float(np.max(np.abs(np.asarray(o, np.float64) - r))) for o, r in zip(outs, reference))
        check_time_bound(rt, session, inputs, a.warmup, a.repeats)
        s = rt.measure(session, inputs, a.warmup, a.repeats)
        t.add_row(
            name,
            f"{s.median:.3f}",
            f"{s.p90:.3f}",
            f"{s.spread:.2f}",
            str(s.n),
            f"{diff:.2e}",
            "noisy" if s.noise else "",
        )
        settings.append(
            f"{name}: "
            + ", ".join(f"{k}={v}" for k, v in rt.settings().items() if k not in ("runtime", "threads"))
            + (f"; noisy measurement: {s.noise}" if s.noise else "")
        )
    Console().print(t)
    for line in settings:
        Console().print(line, markup=False)
    return 0
