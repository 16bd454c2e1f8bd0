"""The terminal summary of a finished run (report.json's figures as a table). Imported by the CLI
at its start, so what needs torch is imported when a table is printed."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from edgeprune.pipeline.decoder.report import table as decoder_table


def summary_table(rep: dict[str, Any]) -> None:
    """What the run measured, baseline beside compressed; a language model's in its own units."""
    from edgeprune.pipeline.report import busy_line, noise_line, p90_ratio  # torch: not for `compress --help`

    if rep.get("kind") == "decoder":
        decoder_table(rep)
        return
    b, f = rep["baseline"], rep["final"]
    t = Table(title=f"edgeprune: budget {rep['budget']['describe']} -> {'MET' if rep['budget']['met'] else 'MISSED'}")
    for col in ("", "baseline", "compressed", "ratio"):
        t.add_column(col, justify="right")
    bl, fl = b["latency_ms"], f["latency_ms"]
    t.add_row("precision", "fp32", rep["precision"]["chosen"], "")
    t.add_row("median ms", f"{bl['median']:.3f}", f"{fl['median']:.3f}", f"{fl['median'] / bl['median']:.3f}")
    t.add_row("p90 ms", f"{bl['p90']:.3f}", f"{fl['p90']:.3f}", p90_ratio(rep))
    for label, key, scale in (("MFLOPs", "flops", 1e6), ("M params", "params", 1e6), ("ONNX MB", "onnx_bytes", 1e6)):
        t.add_row(label, f"{b[key] / scale:.3f}", f"{f[key] / scale:.3f}", f"{f[key] / b[key]:.3f}")
    acc = rep.get("accuracy")
    if acc:
        after = acc.get("recovered")
        t.add_row(
            acc["metric"],
            f"{acc['baseline']:.4f}",
            f"{after if after is not None else acc['pruned']:.4f}",
            f"pruned {acc['pruned']:.4f}",
        )
    ra = rep.get("runtime_accuracy")
    if ra:
        t.add_row(
            f"{ra['metric']} on {rep['runtime']['runtime']}", "", f"{ra['runtime']:.4f}", f"PyTorch {ra['pytorch']:.4f}"
        )
    Console().print(t)
    d = rep["budget"].get("decision")
    how = (
        f"median ratio of {d['rounds']} interleaved rounds, 95% interval [{d['low']:.3f}, {d['high']:.3f}]"
        if d and d["relative"]
        else "ratio of the interleaved medians"
    )
    Console().print(
        f"speed-up x{rep['speedup']:.2f} ({how}; {rep['runtime']['runtime']}, {rep['runtime']['threads']} "
        f"thread(s), n={fl['n']}); {rep['search']['candidates_measured']} candidates measured"
    )
    if noise_line(rep):
        Console().print(f"[bold yellow]warning:[/] {noise_line(rep)}", highlight=False)
    if busy_line(rep):
        Console().print(f"note: {busy_line(rep)}", highlight=False)
