"""report.json and report.md — what was cut, what it cost, how it was measured, and how far the
measurement can be trusted (a noisy one is flagged wherever its figures are shown)."""

from __future__ import annotations

import dataclasses
from typing import Any

from edgeprune import environment
from edgeprune.pipeline.budget import Budget
from edgeprune.pipeline.prune.methods import Importance
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.space import PruningSpace
from edgeprune.pipeline.search.base import candidates_measured, candidates_named
from edgeprune.pipeline.search.objective import LatencyObjective
from edgeprune.runtime_bench import LatencyStats


def assemble(
    *,
    model: dict[str, Any],
    settings: Any,
    runtime: dict[str, Any],
    budget: Budget,
    met: bool,
    baseline: dict[str, Any],
    final: dict[str, Any],
    method: Importance,
    search: dict[str, Any],
    space: PruningSpace,
    plan: Plan,
    left_whole: list[dict[str, Any]],
    timings: dict[str, float],
    timings_within: dict[str, str],
    accuracy: dict[str, Any] | None = None,
    runtime_accuracy: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    recovery: dict[str, Any] | None = None,
    precision: dict[str, Any] | None = None,
    native: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """report.json's content. `baseline` is the baseline stage's description, `final` the final
    stage's (baseline and pruned model timed interleaved); `settings` a `Settings`; `precision`
    what --precision chose and why (pipeline/precision.py)."""
    return {
        "edgeprune_report": 1,
        "model": model,
        "native": native,  # the pruned model in its ecosystem's own format (ecosystems/): path, format, how to load it
        "settings": dataclasses.asdict(settings),
        "runtime": runtime | {"statistic": budget.statistic},
        "budget": {
            "text": settings.budget,
            "metric": budget.metric,
            "value": budget.value,
            "statistic": budget.statistic,
            "describe": budget.describe(),
            "met": met,
            "decision": final.get("decision"),
            "earlier_decisions": final.get("earlier_decisions") or [],
            "fastest_baseline_ms": final.get("fastest_baseline_ms"),
        },
        "baseline": final["baseline"] | {k: baseline[k] for k in ("flops", "params", "onnx_bytes", "onnx_params")},
        "final": final["final"],
        "speedup": final["speedup"],
        "noise": {k: LatencyStats.from_dict(final[k]["latency_ms"]).noise for k in ("baseline", "final")},
        "method": {
            "name": method.name,
            "reference": method.reference,
            "ranking": method.ranking,
            "depth": settings.depth,
            "learned": method.state(),
        },  # what a learned method found (gates, searched widths), for review
        "accuracy": accuracy,
        "runtime_accuracy": runtime_accuracy,  # the final model's metric on the runtime itself (int8, bf16, fp16)
        "precision": precision,
        "data": data,
        "recovery": recovery,
        "search": {
            "strategy": search.get("strategy", settings.search),
            "steps": search["steps"],
            "candidates_measured": candidates_measured(search["steps"]),
            "stop_reason": search["stop_reason"],
            "predictor": search.get("predictor"),
            "guide": search.get("guide"),
            "cost": search.get("cost"),
            "drift_allowance": search.get("drift_allowance"),
            "depth": search.get("depth"),  # under --depth auto: whether blocks were searched, and why
            "busy": busy_summary(search["steps"], final.get("decision")),
        },
        "groups": group_rows(space, plan),
        "removed_blocks": list(plan.removed_blocks),
        "left_whole": left_whole,
        "timings_s": timings,
        "timings_within": timings_within,  # a stage timed inside another -> that one (its seconds counted there too)
        "environment": environment.describe(),
    }


def busy_summary(steps: list[dict[str, Any]], final: dict[str, Any] | None) -> dict[str, Any]:
    """Which latency decisions were taken while other processes used the CPU (decision.py): they
    were re-measured (at least twice the rounds) and their waiting rounds judged on CPU time."""
    busy = [s["index"] for s in steps if (s.get("decision") or {}).get("was_busy")]
    return {
        "candidates": busy,
        "final": bool(final and final.get("was_busy")),
        "most_busy": max(
            [(s.get("decision") or {}).get("busy", 0.0) for s in steps] + [(final or {}).get("busy", 0.0)]
        ),
    }


def busy_line(rep: dict[str, Any]) -> str | None:
    """One sentence saying the machine was busy while the search or the final timing measured, or None."""
    b = rep["search"].get("busy") or {}
    if not b.get("candidates") and not b.get("final"):
        return None
    parts = [candidates_named(b["candidates"])] if b["candidates"] else []
    which = " and ".join(parts + (["the final timing"] if b["final"] else []))
    return (
        f"measured while the machine was busy ({which}; other processes used up to {b['most_busy']:.0%} of "
        "the CPUs): those decisions took at least twice the rounds, and rounds in which the process waited for a CPU "
        "were judged on its CPU time"
    )


def noise_line(rep: dict[str, Any]) -> str | None:
    """One sentence on why the final timing is noisy, or None when it was quiet."""
    noisy = {k: v for k, v in rep.get("noise", {}).items() if v}
    if not noisy:
        return None
    return (
        "noisy measurement (" + "; ".join(f"{k}: {v}" for k, v in noisy.items()) + "): the medians and their ratio "
        "hold, the p90s measure the machine's load; re-run on a quieter machine before trusting them"
    )


def p90_ratio(rep: dict[str, Any]) -> str:
    """The final/baseline p90 ratio, or 'noisy' where either p90 is not a figure of the model."""
    if noise_line(rep):
        return "noisy"
    return f"{rep['final']['latency_ms']['p90'] / rep['baseline']['latency_ms']['p90']:.3f}"


def group_rows(space: PruningSpace, plan: Plan) -> list[dict[str, Any]]:
    """Per group: original and kept width, the width the level asked for, and the coupled layers."""
    requested = plan.meta.get("requested", {})
    rows = []
    for g in space.groups:
        keep = plan.groups[g.id]
        rows.append(
            {
                "group": g.id,
                "kind": g.kind,
                "original": g.size,
                "kept": len(keep.keep),
                "requested": requested.get(g.id),
                "layers": [m for m in g.members if m.endswith("(out)")],
                # how the units go when a layer asks for evenness: the same count from each of its groups
                "layout": f"even per group ({g.even_by}, {len(g.segments)} segments)" if g.even_by else "",
            }
        )
    return rows


def widths_svg(rows: list[dict[str, Any]]) -> str:
    """widths.svg: one bar per group, original width (light) behind kept width (dark), so where a
    layerwise search cut deep and where it kept whole layers shows at a glance. Plain SVG: no
    plotting library on edge hosts."""
    bar, gap, left, width = 14, 4, 260, 420
    widest = max((r["original"] for r in rows), default=1)
    height = 40 + len(rows) * (bar + gap)
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
            'font-family="sans-serif" font-size="11">'
        ),
        f'<text x="{left}" y="16" font-size="13">kept / original channels per group</text>',
    ]
    for i, r in enumerate(rows):
        y = 28 + i * (bar + gap)
        full, kept = width * r["original"] / widest, width * r["kept"] / widest
        label = r["group"] if len(r["group"]) <= 40 else "…" + r["group"][-39:]
        parts += [
            f'<text x="{left - 6}" y="{y + bar - 3}" text-anchor="end">{_xml(label)}</text>',
            f'<rect x="{left}" y="{y}" width="{full:.1f}" height="{bar}" fill="#cfd8e3"/>',
            f'<rect x="{left}" y="{y}" width="{kept:.1f}" height="{bar}" fill="#2f5d8a"/>',
            f'<text x="{left + full + 4:.1f}" y="{y + bar - 3}">{r["kept"]}/{r["original"]}</text>',
        ]
    return "\n".join([*parts, "</svg>", ""])


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


#: how a search priced a width (report.json's search.cost), for report.md
COSTS = {
    "flops": "their predicted FLOPs",
    "latency_table": (
        "their latency in a per-layer table timed on the target (FLOPs misprice small and unaligned layers)"
    ),
}


def _constraint_lines(constraint: dict[str, Any] | None) -> list[str]:
    """What the output format allowed (ecosystems/), and what that cost in reach."""
    if not constraint:
        return []
    reach = constraint.get("reach") or {}
    cost = (
        f" The narrowest plan it allows keeps {reach['flops_floor']:.2f} of the FLOPs; without it, "
        f"{reach['unconstrained_flops_floor']:.2f}."
        if reach
        else ""
    )
    return [f"Constrained by the output format: {constraint['why']}.{cost}"]


def markdown(rep: dict[str, Any]) -> str:
    b, f, rt = rep["baseline"], rep["final"], rep["runtime"]
    bl, fl = b["latency_ms"], f["latency_ms"]
    model, budget, method = rep["model"], rep["budget"], rep["method"]
    lines = [
        "# edgeprune report",
        "",
        f"Model `{model['source']}` (arch {model['arch']}), input {'x'.join(map(str, model['input_shape']))}.",
        f"Budget **{budget['describe']}** ({budget['text']}): **{'met' if budget['met'] else 'MISSED'}**.",
        f"Method `{method['name']}` ({method['reference']}), {method['ranking']} ranking, depth {method['depth']}.",
        *_constraint_lines(model.get("constraint")),
        "",
        (
            f"Measured on `{rt['runtime']}` ({_settings(rt)}), baseline and final timed interleaved in one run, "
            f"{fl['warmup']} warm-up, n={fl['n']} each; statistic: {rt['statistic']}."
        ),
        "",
        "| | baseline | final | ratio |",
        "|---|---:|---:|---:|",
        f"| median latency (ms) | {bl['median']:.3f} | {fl['median']:.3f} | {fl['median'] / bl['median']:.3f} |",
        f"| p90 latency (ms) | {bl['p90']:.3f} | {fl['p90']:.3f} | {p90_ratio(rep)} |",
        f"| FLOPs (MACs) | {b['flops'] / 1e6:.2f} M | {f['flops'] / 1e6:.2f} M | {f['flops'] / b['flops']:.3f} |",
        f"| parameters | {b['params'] / 1e6:.4f} M | {f['params'] / 1e6:.4f} M | {f['params'] / b['params']:.3f} |",
        (
            f"| ONNX file | {b['onnx_bytes'] / 1e6:.2f} MB | {f['onnx_bytes'] / 1e6:.2f} MB "
            f"| {f['onnx_bytes'] / b['onnx_bytes']:.3f} |"
        ),
        "",
        (
            f"Speed-up x{rep['speedup']:.2f}{_decision_text(rep)}. ONNX output matches PyTorch within "
            f"{f['max_abs_diff']:.2e} (max abs diff)."
        ),
        "",
        *([f"**Warning: {noise_line(rep)}.**", ""] if noise_line(rep) else []),
        *([f"Note: {busy_line(rep)}.", ""] if busy_line(rep) else []),
        *_precision_lines(rep),
        *_accuracy_lines(rep),
        f"## Search ({rep['search']['candidates_measured']} candidates; stopped: {rep['search']['stop_reason']})",
        "",
        *([f"Widths priced by {COSTS[rep['search']['cost']]}.", ""] if rep["search"].get("cost") else []),
        *([f"Whole blocks: {rep['search']['depth']}.", ""] if rep["search"].get("depth") else []),
        *(
            [
                (
                    f"Drift allowance raised to {rep['search']['drift_allowance']:.1%}: a candidate confirmed afresh "
                    "moved that far from its first decision, so candidates had to be decided that far under the budget."
                ),
                "",
            ]
            if (rep["search"].get("drift_allowance") or 0) > LatencyObjective.drift
            else []
        ),
        (
            "| # | level / lambda / fill steps | predicted | value "
            "| decided on: ratio or ms [95% interval], rounds | within budget |"
        ),
        "|---:|---:|---:|---:|---:|:---:|",
    ]
    for s in rep["search"]["steps"]:
        scalar = (
            f"{s['level']:.3f}"
            if "level" in s
            else f"λ {s['lambda']:.3g}"
            if "lambda" in s
            else f"+{s['fill']:.0f} steps"
            if "fill" in s
            else "confirmed afresh"
        )
        predicted = f"{s['predicted_flops'] / 1e6:.2f} MFLOPs" if "predicted_flops" in s else f"{s['predicted']:.4g}"
        d = s.get("decision")
        interval = (
            f"{d['estimate']:.4g} [{d['low']:.4g}, {d['high']:.4g}] vs {d['threshold']:.4g}, {d['rounds']}"
            f"{' (busy)' if d['was_busy'] else ''}"
            if d
            else "counted"
        )
        lines.append(
            f"| {s['index']} | {scalar} | {predicted} | {s['value']:.4g} | {interval} | "
            f"{'yes' if s['within_budget'] else 'undecided' if d and d['verdict'] == 'undecided' else 'no'} |"
        )
    pred = rep["search"].get("predictor")
    if pred:
        held = ", ".join(f"{r['error']:+.1%}" for r in pred["held_out"])
        cands = ", ".join(f"{r['error']:+.1%}" for r in pred["candidates"])
        lines += [
            "",
            (
                f"Layerwise cost predictor error (predicted / measured - 1): held-out random plans {held}; "
                f"measured candidates {cands}."
            ),
        ]
    lines += [
        "",
        "## Widths per group",
        "",
        "![original vs kept channels per group](widths.svg)",
        "",
        "| group | kind | original | kept | requested | layout |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rep["groups"]:
        note = "" if r["requested"] is None else f"{r['requested']:g}"
        lines.append(
            f"| `{r['group']}` | {r['kind']} | {r['original']} | {r['kept']} | {note} | {r.get('layout', '')} |"
        )
    lines += [
        "",
        (
            "Kept widths are rounded to hardware-friendly multiples; "
            "'requested' is what the level asked for before rounding."
        ),
        "",
    ]
    if rep.get("removed_blocks"):
        lines += ["## Residual blocks removed", "", ", ".join(f"`{b}`" for b in rep["removed_blocks"]), ""]
    if rep["left_whole"]:
        lines += ["## Left whole", "", "| group | why |", "|---|---|"]
        lines += [f"| `{s['id']}` | {s['reason']} |" for s in rep["left_whole"]]
        lines.append("")
    env = rep["environment"]
    lines += [
        "## Environment",
        "",
        f"{env['cpu']}, {env['cores']} cores, {env['date']}; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        "",
    ]
    return "\n".join(lines)


def _decision_text(rep: dict[str, Any]) -> str:
    """How the final verdict was reached, for the report's speed-up sentence."""
    d = rep["budget"].get("decision")
    if not d:
        return ""
    what = "ratio to the baseline" if d["relative"] else "median latency"
    earlier = rep["budget"].get("earlier_decisions") or []
    said = "; ".join(
        f"{e['estimate']:.4g} between {e['low']:.4g} and {e['high']:.4g}, {e['verdict']}"
        + (f" (baseline {e['baseline_ms']:.3g} ms)" if e.get("baseline_ms") else "")
        for e in earlier
    )
    fastest = rep["budget"].get("fastest_baseline_ms")
    said += f"; the fastest the run timed the baseline: {fastest:.3g} ms" if earlier and fastest else ""
    again = (
        f" (timed {len(earlier) + 1} times, both sessions loaded afresh each time: "
        f"the earlier final timings said {said}, against the search's decision)"
        if earlier
        else ""
    )
    return (
        f"; {what} {d['estimate']:.4g}, between {d['low']:.4g} and {d['high']:.4g} "
        f"(95%, {d['rounds']} rounds interleaved with the baseline"
        f"{f', {slow} in the slow state of the host left out' if (slow := d.get('slow_rounds')) else ''}): "
        f"{d['verdict']} the budget's {d['threshold']:.4g}{again}"
    )


def _accuracy_lines(rep: dict[str, Any]) -> list[str]:
    acc = rep.get("accuracy")
    if not acc:
        return ["Accuracy: not measured (no --data).", ""]
    lines = [
        f"## Accuracy ({acc['metric']} on {rep['data']['source']}, validation split)",
        "",
        "| baseline | pruned, before recovery | recovered |",
        "|---:|---:|---:|",
        f"| {acc['baseline']:.4f} | {acc['pruned']:.4f} | {acc['recovered']:.4f} |"
        if acc.get("recovered") is not None
        else f"| {acc['baseline']:.4f} | {acc['pruned']:.4f} | (no recovery) |",
        "",
    ]
    ra = rep.get("runtime_accuracy")
    if ra:
        chosen = (rep.get("precision") or {}).get("chosen", "fp32")
        lines += [
            (
                f"On `{rep['runtime']['runtime']}` itself "
                f"({chosen}{', reduced precision' if chosen == 'fp32' else ''}) the final model's {ra['metric']} "
                f"over {ra['images']} validation images is **{ra['runtime']:.4f}**, "
                f"against {ra['pytorch']:.4f} for the same model in PyTorch float32 ({ra['delta']:+.4f}) "
                f"and {acc['baseline']:.4f} for the unpruned baseline in PyTorch float32."
            ),
            "",
        ]
    rec = rep.get("recovery")
    if rec:
        cfg = rec["config"]
        budget = f"{cfg['steps']} steps" if cfg.get("steps") else f"{cfg['epochs']} epoch(s)"
        optimizer = f"{cfg.get('optimizer', 'sgd')} ({rec['optimizer_why']})" if rec.get("optimizer_why") else "sgd"
        kept = f" Kept: {rec['kept']['why']}." if rec.get("kept") else ""
        lines += [
            (
                f"Recovery: {rec['method']}, {budget}, {optimizer}, lr {cfg['lr']}, {cfg['schedule']} schedule, "
                f"{rec['processes']} process(es), {rec['seconds']:.0f} s.{kept}"
            ),
            "",
        ]
    return lines


def _precision_lines(rep: dict[str, Any]) -> list[str]:
    """## Precision: what was chosen and why, what each precision reached, how int8 was made and checked."""
    p = rep.get("precision")
    if not p:
        return []
    lines = [f"## Precision: {p['chosen']} (--precision {p['mode']})", "", f"Why: {p['why']}.", ""]
    probe = p.get("int8_unpruned")
    if probe:
        ratio = (
            f"{probe['ratio']:.3f} of the float32 baseline"
            if probe.get("ratio") is not None
            else f"{probe['value']:.4g}"
        )
        acc = probe.get("metric")
        metric = (
            f" Its {acc['metric']} on the runtime: {acc['runtime']:.4f}, against {acc['pytorch']:.4f} in PyTorch "
            "float32."
            if acc
            else ""
        )
        within = "within" if probe["within"] else "over"
        lines += [f"int8 of the unpruned model measured {ratio}: {within} the budget.{metric}", ""]
    if p.get("searched"):
        lines += ["| searched with | FLOPs kept | candidates | outcome |", "|---|---:|---:|---|"]
        for name, t in p["searched"].items():
            lines.append(
                f"| {name} | – | – | {t['error']} |"
                if "error" in t
                else f"| {name} | {t['flops_ratio']:.1%} | {t['candidates_measured']} | {t['stop_reason']} |"
            )
        lines.append("")
    q, check = p.get("quantization"), p.get("int8_check")
    if q and check:
        how = ", ".join(f"{k} {v}" for k, v in q.items() if k not in ("quantizer", "reference"))
        lines += [
            f"`model.onnx` is int8 ({q['reference']}; {how}), quantized after recovery (which ran in float32), "
            f"calibrated on training images. On `{rep['runtime']['runtime']}` it differs from PyTorch float32 by "
            f"{check['rel_l2']:.4f} (relative L2 error of the outputs over {check['images']} validation images; "
            f"tolerance {check['tolerance']:g})"
            + (
                f", the same class on {check['top1_agreement']:.1%} of them"
                if check.get("top1_agreement") is not None
                else ""
            )
            + ". `model.pt` and `state_dict.pt` are the float32 model it was quantized from.",
            "",
        ]
    return lines


def _settings(rt: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in rt.items() if k not in ("runtime", "statistic", "warmup", "repeats"))
