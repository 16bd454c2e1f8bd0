"""Label-free recovery of a Hugging Face text classifier: a small BERT trained here on a synthetic
rule-based task, compressed to 50% of its measured latency through the Hugging Face door, and
recovered by distillation from the unpruned model on unlabelled training inputs.

What it measures: task accuracy on a labelled test split (never shown to edgeprune) of the teacher,
of the pruned model right after pruning, and after label-free recovery (the save_pretrained folder
edgeprune writes, loaded by transformers alone); top-1 agreement with the teacher (edgeprune's own
metric without labels, on its 10% held-out split of the unlabelled inputs, and recomputed here on
the test split); the latency and parameter ratios, the search's candidates and the seconds of
every stage. Optionally (--finetune) a labelled fine-tune of the same pruned model for the same
epochs, as the comparison a user with labels would make.

The task (deterministic, seed 0): vocabulary 1000 (0 = padding, 1 = [CLS]), sequences of 32-64
tokens padded to 64 with an attention mask. Four marker sets S0..S3 = {10..19}, {20..29}, {30..39},
{40..49}; set k occurs e_k in 0..2 times among the first 16 tokens and l_k in 0..3 times after them,
the rest are filler tokens 100..999. Label = argmax_k (2 e_k + l_k) (always unique): markers early
in the sequence count double, so the model must count markers by set (attention over the whole
sequence, token identity) and weigh them by position; counting while ignoring position decides
22 % of the sequences wrongly or by a tie. Classes are balanced (rejection sampling to a target).
Tried first and dropped: two-bit labels (one bit "count(A) > count(B)", the other "X before Y",
"X among the first 16 tokens" or "exactly one of X, Y occurs"): the teacher learnt one bit within
200 steps and left the other at chance for 300-700 steps, every CLS attention head on the one
feature it had learnt (too slow for a teacher trained in minutes on a shared CPU).

Stages, each cached in --work (default /tmp/bert_distill), so a re-run resumes after the last one:
data.npz -> bert/ (teacher, save_pretrained; a checkpoint every 100 steps) -> ids.npz (train
inputs, no labels) -> compressed/ (`compress` in a subprocess, resuming itself) -> eval.json ->
finetune.json (only with --finetune).

    nice -n 10 .venv-zoo/bin/python bench/bert_distill.py [--work /tmp/bert_distill] [--epochs 1] [--finetune]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import header  # noqa: E402
from edgeprune import atomic  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "bert_distill.json"
DEFAULT_WORK = Path("/tmp/bert_distill")

# the task's tokens
PAD, CLS = 0, 1
SETS = [np.arange(10 + 10 * k, 20 + 10 * k) for k in range(4)]
EARLY = 16  #: markers among the first EARLY tokens ([CLS] included) count double
MAX_EARLY, MAX_LATE = 2, 3
FILLER = (100, 1000)
VOCAB, MAX_LEN, MIN_LEN = 1000, 64, 32

#: the teacher's config (dropout off: a synthetic task learnt from scratch in minutes)
BERT = dict(vocab_size=VOCAB, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
            max_position_embeddings=128, num_labels=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            pad_token_id=PAD)


def make_task(n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` sequences of the rule task (module docstring), classes balanced, as int64 arrays."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 4)
    ids = np.zeros((n, MAX_LEN), dtype=np.int64)
    mask = np.zeros((n, MAX_LEN), dtype=np.int64)
    for i in range(n):
        while True:  # counts whose weighted argmax is unique and the target class
            e, l = rng.integers(0, MAX_EARLY + 1, 4), rng.integers(0, MAX_LATE + 1, 4)
            score = 2 * e + l
            if score.argmax() == y[i] and (score == score.max()).sum() == 1:
                break
        length = int(rng.integers(MIN_LEN, MAX_LEN + 1))
        seq = rng.integers(*FILLER, size=length)
        seq[0] = CLS
        early = rng.choice(np.arange(1, EARLY), size=int(e.sum()), replace=False)
        late = rng.choice(np.arange(EARLY, length), size=int(l.sum()), replace=False)
        seq[early] = np.concatenate([rng.choice(SETS[k], size=int(e[k])) for k in range(4)])
        seq[late] = np.concatenate([rng.choice(SETS[k], size=int(l[k])) for k in range(4)])
        ids[i, :length], mask[i, :length] = seq, 1
    return {"input_ids": ids, "attention_mask": mask, "y": y.astype(np.int64)}


def scores(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each set's weighted count (2 per early marker, 1 per later one) and its plain count, (n, 4) each."""
    early = np.stack([np.isin(ids[:, :EARLY], s).sum(1) for s in SETS], 1)
    late = np.stack([np.isin(ids[:, EARLY:], s).sum(1) for s in SETS], 1)
    return 2 * early + late, early + late


def rule_check(d: dict[str, np.ndarray]) -> dict[str, float]:
    """The labels recomputed from the sequences by the rule (1.0: the generator is consistent), and
    how often counting without position would decide wrongly or by a tie."""
    weighted, plain = scores(d["input_ids"])
    unique = (plain == plain.max(1, keepdims=True)).sum(1) == 1
    return {"rule": float((weighted.argmax(1) == d["y"]).mean()),
            "position_blind_wrong_or_tied": float(1 - ((plain.argmax(1) == d["y"]) & unique).mean())}


def build_data(work: Path, n_train: int, n_test: int, log: Callable[[str], None]) -> dict[str, np.ndarray]:
    path = work / "data.npz"
    if not path.exists():
        train, test = make_task(n_train, seed=0), make_task(n_test, seed=1)
        for d in (train, test):
            assert rule_check(d)["rule"] == 1.0
        with atomic.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{f"{k}_train": v for k, v in train.items()}, **{f"{k}_test": v for k, v in test.items()})
        log(f"data: {n_train} train / {n_test} test sequences written to {path}")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def batches(n: int, lengths: np.ndarray, batch_size: int, epoch: int, seed: int) -> list[np.ndarray]:
    """One epoch's batches: shuffled, then sorted by length within windows of 16 batches (so each
    batch is cut to its longest sequence, not to 64), the batches shuffled again."""
    rng = np.random.default_rng(seed * 1000 + epoch)
    order = rng.permutation(n)
    window = batch_size * 16
    out = []
    for s in range(0, n, window):
        w = order[s:s + window]
        w = w[np.argsort(lengths[w], kind="stable")]
        out += [w[i:i + batch_size] for i in range(0, len(w), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


@torch.no_grad()
def predict(model: Any, ids: np.ndarray, mask: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """Logits of a transformers classifier on the full 64-token padded inputs with their masks."""
    model.eval()
    out = []
    for s in range(0, len(ids), batch_size):
        out.append(model(input_ids=torch.from_numpy(ids[s:s + batch_size]),
                         attention_mask=torch.from_numpy(mask[s:s + batch_size])).logits.float().numpy())
    return np.concatenate(out)


def train_teacher(work: Path, d: dict[str, np.ndarray], a: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """BertForSequenceClassification from BERT's config, AdamW, linear warm-up and decay, cached in
    <work>/bert (save_pretrained) with its record in <work>/bert/train.json."""
    from transformers import BertConfig, BertForSequenceClassification

    folder, record_path, ckpt = work / "bert", work / "bert" / "train.json", work / "teacher_ckpt.pt"
    if record_path.exists():
        return json.loads(record_path.read_text())
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**BERT))
    ids, mask, y = d["input_ids_train"], d["attention_mask_train"], d["y_train"]
    lengths = mask.sum(1)
    per_epoch = math.ceil(len(ids) / a.batch_size)
    total = a.train_epochs * per_epoch
    warmup = max(1, int(0.06 * total))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "LayerNorm" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "LayerNorm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}], lr=a.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / (total - warmup))))
    step, history, seconds = 0, [], 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        step, history, seconds = state["step"], state["history"], state["seconds"]
        log(f"teacher: resumed at step {step}/{total}")
    weighted, plain = scores(d["input_ids_test"])
    needs_position = plain.argmax(1) != d["y_test"]  # or a tie, which argmax breaks by the lower set
    probe = slice(0, 500)  # a test slice watched during training (the record's final accuracy is the full test split)
    t0, loss_sum, seen = time.perf_counter() - seconds, 0.0, 0
    while step < total:
        epoch, k = divmod(step, per_epoch)
        for b in batches(len(ids), lengths, a.batch_size, epoch, seed=0)[k:]:
            model.train()
            cut = int(lengths[b].max())
            out = model(input_ids=torch.from_numpy(ids[b, :cut]), attention_mask=torch.from_numpy(mask[b, :cut]),
                        labels=torch.from_numpy(y[b]))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            loss_sum, seen = loss_sum + float(out.loss.detach()), seen + 1
            if step % 100 == 0 or step == total:
                pred, want = predict(model, d["input_ids_test"][probe], d["attention_mask_test"][probe]).argmax(1), d["y_test"][probe]
                acc, hard = float((pred == want).mean()), float((pred == want)[needs_position[probe]].mean())
                elapsed = time.perf_counter() - t0
                history.append({"step": step, "epoch": round(step / per_epoch, 2), "loss": loss_sum / max(seen, 1),
                                "probe_acc": acc, "probe_acc_position_needed": hard, "lr": sched.get_last_lr()[0],
                                "seconds": round(elapsed, 1)})
                log(f"teacher: step {step}/{total} loss {loss_sum / max(seen, 1):.4f} test[:500] acc {acc:.4f} "
                    f"(where position decides: {hard:.3f}) ({elapsed:.0f}s)")
                loss_sum, seen = 0.0, 0
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                            "history": history, "seconds": elapsed}, ckpt)
            if step >= total:
                break
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    test_acc = float((predict(model, d["input_ids_test"], d["attention_mask_test"]).argmax(1) == d["y_test"]).mean())
    record = {"config": BERT, "params": sum(p.numel() for p in model.parameters()),
              "recipe": {"optimizer": "AdamW", "lr": a.lr, "betas": [0.9, 0.999], "weight_decay": 0.01,
                         "schedule": f"linear warm-up {warmup} steps, linear decay to 0", "grad_clip": 1.0,
                         "batch_size": a.batch_size, "epochs": a.train_epochs, "steps": total, "train_sequences": len(ids),
                         "batching": "length-sorted within windows of 16 batches, each batch cut to its longest sequence",
                         "torch_threads": torch.get_num_threads(), "seed": 0},
              "history": history, "train_seconds": round(train_s, 1), "test_accuracy": test_acc,
              "test_eval_seconds": round(time.perf_counter() - t1, 1)}
    model.save_pretrained(str(folder))
    atomic.write_json(record_path, record)
    ckpt.unlink(missing_ok=True)
    log(f"teacher: test accuracy {test_acc:.4f} after {train_s:.0f}s of training; saved to {folder}")
    return record


def write_ids(work: Path, d: dict[str, np.ndarray]) -> Path:
    """The unlabelled recovery data: the TRAIN split's input_ids and attention_mask, no labels."""
    path = work / "ids.npz"
    if not path.exists():
        with atomic.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, input_ids=d["input_ids_train"], attention_mask=d["attention_mask_train"])
    return path


def run_compress(work: Path, ids: Path, a: argparse.Namespace, log: Callable[[str], None]) -> tuple[list[str], float]:
    """`compress` in a subprocess (the zoo python running this script); it resumes itself from its work/."""
    out = work / "compressed"
    cmd = [sys.executable, "-m", "edgeprune.cli", str(work / "bert"), "--budget", a.budget, "--data", str(ids),
           "--epochs", str(a.epochs), "--out", str(out), "--precision", "fp32", "--input-shape", f"1x{MAX_LEN}"]
    if a.max_candidates != 8:
        cmd += ["--max-candidates", str(a.max_candidates)]
    if (out / "report.json").exists():
        return cmd, json.loads((work / "compress_seconds.json").read_text())["seconds"] if (work / "compress_seconds.json").exists() else float("nan")
    log("$ " + " ".join(cmd))
    t0 = time.perf_counter()
    with open(work / "compress.log", "a") as logf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            logf.flush()
            log("  | " + line.rstrip())
        rc = proc.wait()
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"compress exited {rc}; see {work / 'compress.log'}")
    atomic.write_json(work / "compress_seconds.json", {"seconds": round(seconds, 1)})
    return cmd, seconds


def pruned_before_recovery(work: Path) -> torch.nn.Module:
    """The original BERT with the run's plan.json applied by edgeprune (the weights as pruned, before recovery)."""
    from edgeprune.pipeline.loading import load_model
    from edgeprune.pipeline.prune.apply import apply
    from edgeprune.pipeline.prune.plan import Plan

    loaded = load_model(work / "bert", input_shape=(1, MAX_LEN))
    return apply(loaded.model, Plan.load(work / "compressed" / "plan.json"), loaded.example_inputs).eval()


def onnx_check(folder_model: Any, onnx_path: Path, d: dict[str, np.ndarray], n: int = 8) -> dict[str, Any]:
    """The written folder's logits against model.onnx's (onnxruntime) on `n` test inputs, one at a time."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    diffs = []
    for i in range(n):
        feed = {"input_ids": d["input_ids_test"][i:i + 1], "attention_mask": d["attention_mask_test"][i:i + 1]}
        got = sess.run(None, {k: feed[k] for k in names})[0]
        want = predict(folder_model, feed["input_ids"], feed["attention_mask"])
        diffs.append(float(np.abs(got - want).max()))
    return {"inputs": names, "samples": n, "max_abs_diff": max(diffs), "within_1e-4": max(diffs) <= 1e-4}


def evaluate(work: Path, d: dict[str, np.ndarray], log: Callable[[str], None]) -> dict[str, Any]:
    """Task accuracy and agreement with the teacher on the labelled test split, cached in eval.json."""
    import transformers

    path = work / "eval.json"
    if path.exists():
        return json.loads(path.read_text())
    report = json.loads((work / "compressed" / "report.json").read_text())
    native = report.get("native") or {}
    folder = work / "compressed" / native.get("path", "hf_model")
    ids, mask, y = d["input_ids_test"], d["attention_mask_test"], d["y_test"]
    rows: dict[str, Any] = {}
    t0 = time.perf_counter()
    teacher = transformers.BertForSequenceClassification.from_pretrained(str(work / "bert")).eval()
    ref = predict(teacher, ids, mask).argmax(1)
    models: dict[str, Any] = {"teacher": teacher, "pruned": pruned_before_recovery(work),
                              "recovered": transformers.BertForSequenceClassification.from_pretrained(str(folder)).eval()}
    for name, model in models.items():
        t1 = time.perf_counter()
        pred = predict(model, ids, mask).argmax(1)
        rows[name] = {"test_accuracy": float((pred == y).mean()), "test_agreement": float((pred == ref).mean()),
                      "params": sum(p.numel() for p in model.parameters()),
                      "intermediate_size": int(model.bert.encoder.layer[0].intermediate.dense.out_features),
                      "seconds": round(time.perf_counter() - t1, 1)}
        log(f"{name}: test accuracy {rows[name]['test_accuracy']:.4f}, agreement with the teacher {rows[name]['test_agreement']:.4f}")
    check = onnx_check(models["recovered"], work / "compressed" / "model.onnx", d)
    log(f"hf folder vs model.onnx: max |diff| {check['max_abs_diff']:.2e} over {check['samples']} test inputs")
    result = {"folder": str(folder), "rows": rows, "onnx_check": check, "seconds": round(time.perf_counter() - t0, 1)}
    atomic.write_json(path, result)
    return result


def finetune(work: Path, d: dict[str, np.ndarray], epochs: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The comparison a user with labels makes: edgeprune's labelled fine-tune (FineTune: SGD,
    its default lr, cosine) of the same pruned model on the same training rows (the unlabelled
    file's 90% split, now with their labels) for the same epochs and batch size."""
    import transformers

    from edgeprune.pipeline.data import load_data
    from edgeprune.pipeline.data.sources import ModelInputs
    from edgeprune.pipeline.loading import load_model
    from edgeprune.pipeline.recovery import TrainConfig, get_recovery, top1

    path = work / "finetune.json"
    if path.exists():
        return json.loads(path.read_text())
    labelled = work / "ids_labelled.npz"
    if not labelled.exists():
        with atomic.atomic_path(labelled) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, input_ids=d["input_ids_train"], attention_mask=d["attention_mask_train"], y=d["y_train"])
    report = json.loads((work / "compressed" / "report.json").read_text())
    batch_size = report["settings"]["batch_size"] if "settings" in report else 128
    loaded = load_model(work / "bert", input_shape=(1, MAX_LEN))
    data = load_data(str(labelled), batch_size, seed=0, model=ModelInputs(loaded.example_inputs, loaded.input_names))
    student, teacher = pruned_before_recovery(work), copy.deepcopy(loaded.model).eval()
    recovery = get_recovery("finetune")
    config = TrainConfig(epochs=epochs, lr=recovery.default_lr)
    t0 = time.perf_counter()
    result = recovery.fit(student, teacher, data, config, top1, None, log)
    seconds = time.perf_counter() - t0
    pred = predict(student,  # apply() pruned the transformers module in place
                    d["input_ids_test"], d["attention_mask_test"]).argmax(1)
    ref = predict(transformers.BertForSequenceClassification.from_pretrained(str(work / "bert")).eval(),
                  d["input_ids_test"], d["attention_mask_test"]).argmax(1)
    row = {"recovery": "finetune (labelled)", "config": {"epochs": epochs, "lr": config.lr, "schedule": config.schedule,
                                                         "batch_size": batch_size, "optimizer": "SGD nesterov, momentum 0.9"},
           "history": result.history, "seconds": round(seconds, 1), "val_top1": result.final_metric,
           "test_accuracy": float((pred == d["y_test"]).mean()), "test_agreement": float((pred == ref).mean())}
    atomic.write_json(path, row)
    log(f"labelled fine-tune: test accuracy {row['test_accuracy']:.4f} after {seconds:.0f}s")
    return row


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of the run's report.json this benchmark tabulates."""
    budget, search, recovery = report.get("budget") or {}, report.get("search") or {}, report.get("recovery") or {}
    decision = {k: v for k, v in (budget.get("decision") or {}).items() if k != "rounds_ms"}
    base, final = report.get("baseline") or {}, report.get("final") or {}
    return {"met": budget.get("met"), "latency_ratio": decision.get("estimate"),
            "latency_ratio_95": [decision.get("low"), decision.get("high")], "speedup": report.get("speedup"),
            "baseline_ms": (base.get("latency_ms") or {}).get("median"), "final_ms": (final.get("latency_ms") or {}).get("median"),
            "params_baseline": base.get("params"), "params_final": final.get("params"),
            "params_ratio": final["params"] / base["params"] if base.get("params") and final.get("params") else None,
            "flops_ratio": final["flops"] / base["flops"] if base.get("flops") and final.get("flops") else None,
            "onnx_max_abs_diff_vs_torch": final.get("max_abs_diff"),
            "decision": decision, "accuracy": report.get("accuracy"), "data": report.get("data"),
            "candidates_measured": search.get("candidates_measured"), "stop_reason": search.get("stop_reason"),
            "search_strategy": search.get("strategy"), "groups": report.get("groups"),
            "recovery": {k: recovery.get(k) for k in ("method", "config", "history", "final_metric", "seconds")},
            "timings_s": report.get("timings_s"), "native": report.get("native"), "noise": report.get("noise")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache of every stage (default /tmp/bert_distill)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--train", type=int, default=20_000, help="training sequences (default 20000)")
    p.add_argument("--test", type=int, default=2_000, help="test sequences (default 2000)")
    p.add_argument("--train-epochs", type=int, default=2, help="teacher epochs (default 2)")
    p.add_argument("--batch-size", type=int, default=32, help="teacher batch size (default 32)")
    p.add_argument("--lr", type=float, default=3e-4, help="teacher peak learning rate (default 3e-4; 1e-3 collapsed to chance)")
    p.add_argument("--threads", type=int, default=1, help="torch threads here (default 1, as compress uses)")
    p.add_argument("--budget", default="50%")
    p.add_argument("--epochs", type=int, default=1, help="recovery epochs, label-free and --finetune alike (default 1)")
    p.add_argument("--max-candidates", type=int, default=16,
                   help="compress --max-candidates (default 16: with the default 8, a run beside other processes ended "
                        "'machine too noisy to decide' with candidates 4 and 5 read under the budget but undecided)")
    p.add_argument("--finetune", action="store_true", help="also fine-tune the pruned model on the labels, same epochs")
    p.add_argument("--until", choices=("data", "teacher", "compress", "eval"), help="stop after this stage")
    a = p.parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {**header("bert_distill"), "budget": a.budget, "epochs": a.epochs, "work": str(a.work)}
    result["task"] = {"vocab": VOCAB, "max_len": MAX_LEN, "min_len": MIN_LEN, "train": a.train, "test": a.test,
                      "rule": "label = 2*[count(A={10..19}) > count(B={20..29})] + [X=30 among the first 16 tokens]; "
                              "A, B 1-6 times each (never equal); X 1-2 times in the first 16 when the bit is set, "
                              "never there otherwise, 0-2 times after them, filler 100..999, [CLS]=1 first, padding 0 with an attention mask",
                      "seeds": {"train": 0, "test": 1}}
    d = build_data(a.work, a.train, a.test, log)
    result["task"]["test_stats"] = rule_check({k[:-5]: v for k, v in d.items() if k.endswith("_test")})
    if a.until == "data":
        return 0
    result["teacher"] = train_teacher(a.work, d, a, log)
    if a.until == "teacher":
        return 0
    ids = write_ids(a.work, d)
    cmd, seconds = run_compress(a.work, ids, a, log)
    report = json.loads((a.work / "compressed" / "report.json").read_text())
    result["compress"] = {"command": " ".join(cmd[2:]).replace(str(a.work), "<work>"), "wall_seconds": round(seconds, 1),
                          "unlabelled_data": f"input_ids and attention_mask of the {a.train} training sequences, no labels",
                          **summarise(report)}
    atomic.write_json(a.out, result)
    if a.until == "compress":
        return 0
    result["eval"] = evaluate(a.work, d, log)
    atomic.write_json(a.out, result)
    if a.until == "eval":
        return 0
    if a.finetune:
        result["finetune"] = finetune(a.work, d, a.epochs, log)
        atomic.write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
