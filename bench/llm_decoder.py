"""A small decoder language model to 50 % of its time per generated token on ort-cpu: what it
costs in perplexity before and after label-free distillation, against Torch-Pruning's LLM recipe
at the same parameter count and the same distillation.

The teacher: bench/llm_teacher.py (a Llama, 8 layers, hidden 512, 8 query / 2 key-value heads of
64, MLP 1536, byte-level BPE of 4096, trained here from scratch on the Python standard library's
sources). Every perplexity here is measured on the same held-out tokens (the files the teacher
never trained on, `heldout.txt`), which compress never sees.

Rows:
- edgeprune: `compress TEACHER --budget 50% --data train.txt`, the default flags (recovery: 300
  distillation steps of 8 x 128 tokens); the cut before recovery is rebuilt from plan.json (the same cut).
- torch-pruning: Torch-Pruning 1.6.1's examples/LLMs/prune_llm.py recipe (GroupMagnitudeImportance,
  uniform per layer, heads and hidden size at one ratio, round_to 4) at the ratio whose parameter
  count is nearest edgeprune's, then the same distillation (pipeline/decoder/recover.py, same steps,
  batch, tokens) and its decode step timed against the teacher's the same way (interleaved).

    .venv-zoo/bin/python bench/llm_decoder.py [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench.common import header, run_compress  # noqa: E402

WORK = REPO / "bench" / "work"
OUT = REPO / "bench" / "results" / "llm_decoder.json"
HELD_SEQUENCES, HELD_LEN = 64, 128


def heldout(tokenizer_dir: Path) -> torch.Tensor:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = tok((WORK / "llm_text" / "heldout.txt").read_text(), add_special_tokens=False)["input_ids"]
    ids = torch.tensor(ids[: HELD_SEQUENCES * HELD_LEN], dtype=torch.long)
    return ids.view(HELD_SEQUENCES, HELD_LEN)


def perplexity(model: torch.nn.Module, teacher: torch.nn.Module | None, held: torch.Tensor) -> dict[str, float]:
    from edgeprune.pipeline.decoder.recover import evaluate

    return evaluate(model, teacher, held)


def load(folder: Path) -> torch.nn.Module:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").float().eval()


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tp_prune(teacher_dir: Path, ratio: float, dest: Path, q: Any) -> None:
    """Torch-Pruning's LLM recipe at `ratio` (prune_llm.py's settings), saved as a folder."""
    try:
        import torch_pruning as tp

        model = load(teacher_dir)
        inputs = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
        num_heads = {}
        for name, m in model.named_modules():
            if name.endswith("self_attn"):
                num_heads[m.q_proj] = model.config.num_attention_heads
                num_heads[m.k_proj] = model.config.num_key_value_heads
                num_heads[m.v_proj] = model.config.num_key_value_heads
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs=inputs,
            importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
            global_pruning=False,
            output_transform=lambda x: x.logits,
            pruning_ratio=ratio,
            ignored_layers=[model.lm_head],
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=ratio,
            round_to=4,
        )
        for g in pruner.step(interactive=True):
            g.prune()
        c = model.config
        c.hidden_size = model.lm_head.in_features
        attn = model.model.layers[0].self_attn
        c.num_attention_heads = attn.q_proj.out_features // c.head_dim
        c.num_key_value_heads = attn.k_proj.out_features // c.head_dim
        c.intermediate_size = model.model.layers[0].mlp.gate_proj.out_features
        model.save_pretrained(str(dest))
        q.put({"ok": True, "params": params(model), "config": {k: getattr(c, k) for k in SHAPE_KEYS}})
    except Exception as err:  # noqa: BLE001 - the anchor's failure is a result, recorded as such
        q.put({"ok": False, "error": f"{type(err).__name__}: {err}"[:500]})


SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")


def tp_row(teacher_dir: Path, target_params: int, timeout_s: float) -> dict[str, Any]:
    """The ratio whose pruned parameter count is nearest `target_params` (bisection, each try in a
    process of its own with a time limit: Torch-Pruning's graph on transformers 5 may not return)."""
    lo, hi, best, tries = 0.05, 0.9, None, []
    for _ in range(6):
        ratio = round((lo + hi) / 2, 3)
        dest = WORK / f"tp_{ratio}"
        q: Any = multiprocessing.Queue()
        proc = multiprocessing.Process(target=tp_prune, args=(teacher_dir, ratio, dest, q))
        t0 = time.time()
        proc.start()
        proc.join(timeout_s)
        if proc.is_alive():
            proc.kill()
            tries.append({"ratio": ratio, "ok": False, "error": f"did not finish in {timeout_s:.0f} s"})
            break
        got = q.get() if not q.empty() else {"ok": False, "error": f"exited {proc.exitcode}"}
        tries.append({"ratio": ratio, "seconds": round(time.time() - t0, 1)} | got)
        if not got["ok"]:
            break
        if best is None or abs(got["params"] - target_params) < abs(best["params"] - target_params):
            best = {"ratio": ratio, "folder": str(dest)} | got
        lo, hi = (ratio, hi) if got["params"] > target_params else (lo, ratio)
    return {"tries": tries, "best": best}


def decode_ratio(teacher: torch.nn.Module, model: torch.nn.Module, context: int, work: Path) -> dict[str, Any]:
    """`model`'s decode step timed interleaved with the teacher's (decision.py's rounds), at `context`."""
    from edgeprune.exporters import OnnxExporter
    from edgeprune.pipeline.decision import decide
    from edgeprune.pipeline.decoder.shape import shape_of
    from edgeprune.pipeline.decoder.step import DecodeStep, step_inputs, step_io
    from edgeprune.pipeline.measure import TargetMeasurer
    from edgeprune.runtime_bench import get_runtime

    runtime = get_runtime("ort-cpu", threads=1)
    sessions, feeds = [], []
    for tag, m in (("teacher", teacher), ("other", model)):
        shape, hd = shape_of(m.config, type(m).__name__)
        inputs = step_inputs(shape, hd, m.config.vocab_size, context)
        measurer = TargetMeasurer(runtime, inputs, work, 10, 50, OnnxExporter(io=step_io(shape.layers)))
        sessions.append(measurer.prepare(DecodeStep(m, shape.layers).eval(), f"bench_{tag}").session)
        feeds.append(measurer.inputs_np)
    d, stats, ref = decide(runtime, sessions[1], feeds[1], 0.5, sessions[0], True, reference_inputs=feeds[0])
    return {
        "ratio": d.estimate,
        "low": d.low,
        "high": d.high,
        "ms": stats.median,
        "teacher_ms": ref.median if ref else None,
    }


def genai_ms(folder: Path, precision: str, context: int, new_tokens: int = 64) -> dict[str, Any]:
    """ONNX Runtime GenAI's builder on `folder` (`precision` fp32 or int4, CPU) and its generator's
    ms per token for `new_tokens` tokens after a prompt of `context` tokens, interleaving nothing
    (one model at a time: the GenAI rows are compared by their medians, said so in the README)."""
    import subprocess

    built = WORK / f"genai_{folder.name}_{precision}"
    if not (built / "genai_config.json").exists():
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o", str(built)]
        cmd += ["-p", precision, "-e", "cpu", "-c", str(WORK / "genai_cache")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            return {"ok": False, "error": done.stderr.strip().splitlines()[-1][:300] if done.stderr else "failed"}
    import onnxruntime_genai as og

    model = og.Model(str(built))
    prompt = torch.randint(1, 4000, (context,), generator=torch.Generator().manual_seed(0)).tolist()
    runs = []
    for _ in range(3):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=context + new_tokens + 1, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(prompt)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            gen.generate_next_token()
        runs.append((time.perf_counter() - t0) * 1e3 / new_tokens)
    return {"ok": True, "ms_per_token": sorted(runs)[1], "runs": runs, "folder": str(built)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=300, help="the anchor's distillation steps (compress's default)")
    p.add_argument("--tp-timeout", type=float, default=600.0)
    p.add_argument("--genai", action="store_true", help="also time both shapes with ONNX Runtime GenAI")
    a = p.parse_args()
    from edgeprune.pipeline.decoder import recover
    from edgeprune.pipeline.decoder.cut import cut
    from edgeprune.pipeline.decoder.shape import Layout, Shape
    from edgeprune.pipeline.decoder.tokens import load_tokens

    teacher_dir = WORK / "llm_teacher"
    training = json.loads((teacher_dir / "training.json").read_text())
    result: dict[str, Any] = header("llm_decoder") | {"teacher": {k: v for k, v in training.items() if k != "history"}}
    held = heldout(teacher_dir)
    teacher = load(teacher_dir)
    result["teacher"]["heldout"] = perplexity(teacher, None, held)

    out = WORK / "llm_out"
    train_txt = str(WORK / "llm_text" / "train.txt")
    args = [str(teacher_dir), "--budget", "50%", "--data", train_txt]
    t0 = time.time()
    rep = run_compress(args, out, WORK / "llm_out.log").report
    plan = rep["plan"]
    before = cut(
        teacher,
        Layout(**plan["layout"]),
        Shape.from_dict(plan["before"]),
        Shape.from_dict(plan["shape"]),
        plan["head_dim"],
        plan["keep"],
    )
    recovered = load(out / "hf_model")
    result["edgeprune"] = {
        "command": "compress " + " ".join(args),
        "met": rep["budget"]["met"],
        "decision": rep["budget"]["decision"]["describe"],
        "context": rep["budget"]["context"],
        "shape": rep["shape"],
        "decode_ms": {"baseline": rep["baseline"]["decode_ms"]["median"], "final": rep["final"]["decode_ms"]["median"]},
        "prefill_ms": {
            "baseline": rep["baseline"]["prefill_ms"]["median"],
            "final": rep["final"]["prefill_ms"]["median"],
        },
        "params": {"baseline": rep["baseline"]["params"], "final": rep["final"]["params"]},
        "kv_bytes": {"baseline": rep["baseline"]["kv_bytes"], "final": rep["final"]["kv_bytes"]},
        "timings_s": rep["timings_s"],
        "wall_s": round(time.time() - t0, 1),
        "recovery": {k: rep["recovery"][k] for k in ("steps", "tokens", "seconds", "kept", "batch_sequences")},
        "in_run_perplexity": rep["accuracy"],
        "heldout": {"cut": perplexity(before, teacher, held), "recovered": perplexity(recovered, teacher, held)},
    }
    print(json.dumps(result["edgeprune"], indent=1), flush=True)
    OUT.write_text(json.dumps(result, indent=1))

    anchor = tp_row(teacher_dir, rep["final"]["params"], a.tp_timeout)
    result["torch_pruning"] = anchor
    if anchor["best"] is not None:
        tp_model = load(Path(anchor["best"]["folder"]))
        tokens = load_tokens(str(WORK / "llm_text" / "train.txt"), teacher_dir, teacher.config.vocab_size)
        cut_ppl = perplexity(tp_model, teacher, held)
        batch = rep["recovery"]["batch_sequences"]
        rec = recover.distill(tp_model, teacher, tokens, 1, a.steps, None, batch, print)
        anchor["heldout"] = {"cut": cut_ppl, "recovered": perplexity(tp_model, teacher, held)}
        anchor["recovery"] = {k: rec[k] for k in ("steps", "tokens", "seconds", "kept")}
        anchor["decode"] = decode_ratio(teacher, tp_model, rep["budget"]["context"], WORK / "tp_measure")
    result["edgeprune"]["decode"] = decode_ratio(teacher, recovered, rep["budget"]["context"], WORK / "ep_measure")
    OUT.write_text(json.dumps(result, indent=1))
    if a.genai:
        ctx = rep["budget"]["context"]
        result["genai"] = {
            f"{name}_{precision}": genai_ms(folder, precision, ctx)
            for name, folder in (("teacher", teacher_dir), ("edgeprune", out / "hf_model"))
            for precision in ("fp32", "int4")
        }
        OUT.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("teacher", "torch_pruning")}, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
