"""report.json and report.md of a decoder run: the budget in its unit (ms per generated token at
context N), the time to the first token, the weights' and the key/value cache's bytes, the shape
before and after, the perplexity before and after recovery, and how the shape was chosen."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def assemble(**parts: Any) -> dict[str, Any]:
    """The report: what the stages measured, as they left it, under stable keys."""
    b, f = parts["baseline"], parts["final"]
    timed = parts["runtime"].get("precision", "fp32")  # ort-genai:int4 times the int4 build of each shape
    why = "decoders are cut and published in float32 here" + (
        f"; the budget was measured on {parts['runtime']['runtime']}'s {timed} build of them (genai_model/)"
        if timed != "fp32"
        else ""
    )
    return {
        "kind": "decoder",
        "model": parts["model"],
        "budget": parts["budget"],
        "runtime": parts["runtime"],
        "precision": {"chosen": "fp32", "timed_as": timed, "why": why},
        "baseline": b,
        "final": f,
        "speedup": b["decode_ms"]["median"] / f["decode_ms"]["median"],
        "shape": {"before": parts["model"]["shape"], "after": parts["plan"]["shape"]},
        "plan": parts["plan"],
        "search": parts["search"],
        "scores": parts["scores"],
        "accuracy": parts["accuracy"],
        "recovery": parts["recovery"],
        "verification": parts["verification"],
        "native": parts["native"],
        "data": parts["data"],
        "timings_s": parts["timings"],
        "outputs": parts["outputs"],  # what --out holds beside report.json/report.md and the door's folder
    }


def _row(label: str, before: float, after: float, fmt: str = "{:.3f}") -> str:
    return (
        f"| {label} | {fmt.format(before)} | {fmt.format(after)} | {after / before if before else float('nan'):.3f} |"
    )


def markdown(rep: dict[str, Any]) -> str:
    b, f, bud = rep["baseline"], rep["final"], rep["budget"]
    ctx = bud["context"]
    lines = [
        f"# edgeprune: {rep['model']['architecture']} to {bud['describe']}: {'MET' if bud['met'] else 'MISSED'}",
        "",
        (
            f"Time per generated token with a filled cache of {ctx} tokens (the budget's unit), on "
            f"{rep['runtime']['runtime']} ({rep['runtime']['threads']} thread(s)); time to the first token for a "
            f"prompt of {bud['prompt_tokens']} tokens."
        ),
        "",
        "| | baseline | compressed | ratio |",
        "|---|---|---|---|",
        _row("decode ms/token (median)", b["decode_ms"]["median"], f["decode_ms"]["median"]),
        _row("decode ms/token (p90)", b["decode_ms"]["p90"], f["decode_ms"]["p90"]),
        _row(f"prefill ms ({bud['prompt_tokens']} tokens)", b["prefill_ms"]["median"], f["prefill_ms"]["median"]),
        _row("weights MB", b["weight_bytes"] / 1e6, f["weight_bytes"] / 1e6),
        _row(f"KV cache MB at {ctx} tokens", b["kv_bytes"] / 1e6, f["kv_bytes"] / 1e6),
        _row("M params", b["params"] / 1e6, f["params"] / 1e6),
        "",
        f"Shape: {rep['shape']['before']} -> {rep['shape']['after']}.",
        f"Decision: {bud.get('decision', {}).get('describe', '')}.",
    ]
    acc = rep.get("accuracy")
    if acc:
        lines += [
            "",
            "Perplexity on held-out tokens (lower is better): "
            f"baseline {acc['baseline']['perplexity']:.3f}, cut {acc['pruned']['perplexity']:.3f}"
            + (f", recovered {acc['recovered']['perplexity']:.3f}" if acc.get("recovered") else "")
            + f"; next-token agreement with the baseline: cut {acc['pruned']['agreement']:.3f}"
            + (f", recovered {acc['recovered']['agreement']:.3f}" if acc.get("recovered") else "")
            + ".",
        ]
    rec = rep.get("recovery")
    if rec:
        lines += [
            (
                f"Recovery: {rec['method']}, {rec['steps']} steps, {rec['tokens']} tokens, {rec['seconds']:.0f} s; "
                f"kept {rec['kept']['why']}."
            )
        ]
    v = rep["verification"]
    lines += [
        "",
        (
            f"Verified: the decode step chained over {v['steps']} tokens on the runtime matches PyTorch to "
            f"{v['max_abs_diff']:.2g}; greedy tokens {'equal' if v['same_tokens'] else 'DIFFER from'} transformers' "
            "generate()."
        ),
    ]
    return "\n".join(lines) + "\n"


def table(rep: dict[str, Any]) -> None:
    """The terminal summary of a decoder run."""
    b, f, bud = rep["baseline"], rep["final"], rep["budget"]
    t = Table(title=f"edgeprune: budget {bud['describe']} -> {'MET' if bud['met'] else 'MISSED'}")
    for col in ("", "baseline", "compressed", "ratio"):
        t.add_column(col, justify="right")
    for label, before, after in (
        (f"decode ms/token @{bud['context']}", b["decode_ms"]["median"], f["decode_ms"]["median"]),
        (f"prefill ms @{bud['prompt_tokens']}", b["prefill_ms"]["median"], f["prefill_ms"]["median"]),
        ("weights MB", b["weight_bytes"] / 1e6, f["weight_bytes"] / 1e6),
        ("KV cache MB", b["kv_bytes"] / 1e6, f["kv_bytes"] / 1e6),
    ):
        t.add_row(label, f"{before:.3f}", f"{after:.3f}", f"{after / before:.3f}")
    acc = rep.get("accuracy")
    if acc:
        after = (acc.get("recovered") or acc["pruned"])["perplexity"]
        t.add_row("perplexity (lower better)", f"{acc['baseline']['perplexity']:.3f}", f"{after:.3f}", "")
    Console().print(t)
