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
data.npz -> bert/ (teacher, save_pretrained, recipe in bert/train.json; a checkpoint every 100
steps) -> ids.npz (train inputs, no labels) -> compressed/ (`compress` in a subprocess, resuming
itself; recovery at distillation's default learning rate unless --recovery-lr) -> its evaluation
-> the labelled fine-tune (--finetune) -> compressed_lr<LR>/ and its evaluation for each --also-lr
LR (another run of compress, recovering at that learning rate). The evaluations and the fine-tune
are bench/common `Steps` (steps/<name>.json), redone when the run they stand on is another.

    .venv-zoo/bin/python bench/bert_distill.py [--work /tmp/bert_distill] [--finetune] [--also-lr 0.001]

The training (teacher, compress's recovery, the fine-tune) runs at niceness --nice (10), compress's
latency measurements at the niceness the script was started with: on a machine shared with nice'd
processes, nice'd measurements waited for a CPU in most rounds, and the busy margin left the
narrowest plan (0.47 of the baseline) undecided under a 50% budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import common  # noqa: E402
from bench.common import header  # noqa: E402
from edgeprune import atomic  # noqa: E402
from edgeprune.pipeline.recovery import get_recovery  # noqa: E402

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
BERT = {
    "vocab_size": VOCAB,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "max_position_embeddings": 128,
    "num_labels": 4,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "pad_token_id": PAD,
}


def make_task(n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` sequences of the rule task (module docstring), classes balanced, as int64 arrays."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 4)
    ids = np.zeros((n, MAX_LEN), dtype=np.int64)
    mask = np.zeros((n, MAX_LEN), dtype=np.int64)
    for i in range(n):
        while True:  # counts whose weighted argmax is unique and the target class
            e, late_n = rng.integers(0, MAX_EARLY + 1, 4), rng.integers(0, MAX_LATE + 1, 4)
            score = 2 * e + late_n
            if score.argmax() == y[i] and (score == score.max()).sum() == 1:
                break
        length = int(rng.integers(MIN_LEN, MAX_LEN + 1))
        seq = rng.integers(*FILLER, size=length)
        seq[0] = CLS
        early = rng.choice(np.arange(1, EARLY), size=int(e.sum()), replace=False)
        late = rng.choice(np.arange(EARLY, length), size=int(late_n.sum()), replace=False)
        seq[early] = np.concatenate([rng.choice(SETS[k], size=int(e[k])) for k in range(4)])
        seq[late] = np.concatenate([rng.choice(SETS[k], size=int(late_n[k])) for k in range(4)])
        ids[i, :length], mask[i, :length] = seq, 1
    return {"input_ids": ids, "attention_mask": mask, "y": y.astype(np.int64)}


def scores(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each set's weighted count (2 per early marker, 1 per later one) and its plain count, (n, 4) each."""
    early = np.stack([np.isin(ids[:, :EARLY], s).sum(1) for s in SETS], 1)
    late = np.stack([np.isin(ids[:, EARLY:], s).sum(1) for s in SETS], 1)
    return 2 * early + late, early + late


def position_decides(ids: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where counting without position gets the label wrong or ties: (n,) bool."""
    _, plain = scores(ids)
    unique = (plain == plain.max(1, keepdims=True)).sum(1) == 1
    return ~((plain.argmax(1) == y) & unique)


def rule_check(d: dict[str, np.ndarray]) -> dict[str, float]:
    """The labels recomputed from the sequences by the rule (1.0: the generator is consistent), and
    how often counting without position would decide wrongly or by a tie."""
    weighted, _ = scores(d["input_ids"])
    return {
        "rule": float((weighted.argmax(1) == d["y"]).mean()),
        "position_blind_wrong_or_tied": float(position_decides(d["input_ids"], d["y"]).mean()),
    }


def build_data(work: Path, n_train: int, n_test: int, log: Callable[[str], None]) -> dict[str, np.ndarray]:
    path = work / "data.npz"
    if not path.exists():
        train, test = make_task(n_train, seed=0), make_task(n_test, seed=1)
        for d in (train, test):
            assert rule_check(d)["rule"] == 1.0
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
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
        w = order[s : s + window]
        w = w[np.argsort(lengths[w], kind="stable")]
        out += [w[i : i + batch_size] for i in range(0, len(w), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


@torch.no_grad()
def predict(model: Any, ids: np.ndarray, mask: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """Logits of a transformers classifier on the full 64-token padded inputs with their masks."""
    model.eval()
    out = []
    for s in range(0, len(ids), batch_size):
        out.append(
            model(
                input_ids=torch.from_numpy(ids[s : s + batch_size]),
                attention_mask=torch.from_numpy(mask[s : s + batch_size]),
            )
            .logits.float()
            .numpy()
        )
    return np.concatenate(out)


def train_teacher(
    work: Path, d: dict[str, np.ndarray], a: argparse.Namespace, log: Callable[[str], None]
) -> dict[str, Any]:
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
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / (total - warmup)))
    )
    step, history, seconds = 0, [], 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        step, history, seconds = state["step"], state["history"], state["seconds"]
        log(f"teacher: resumed at step {step}/{total}")
    needs_position = position_decides(d["input_ids_test"], d["y_test"])
    probe = slice(0, 500)  # a test slice watched during training (the record's final accuracy is the full test split)
    t0, loss_sum, seen = time.perf_counter() - seconds, 0.0, 0
    while step < total:
        epoch, k = divmod(step, per_epoch)
        for b in batches(len(ids), lengths, a.batch_size, epoch, seed=0)[k:]:
            model.train()
            cut = int(lengths[b].max())
            out = model(
                input_ids=torch.from_numpy(ids[b, :cut]),
                attention_mask=torch.from_numpy(mask[b, :cut]),
                labels=torch.from_numpy(y[b]),
            )
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            loss_sum, seen = loss_sum + float(out.loss.detach()), seen + 1
            if step % 100 == 0 or step == total:
                pred, want = (
                    predict(model, d["input_ids_test"][probe], d["attention_mask_test"][probe]).argmax(1),
                    d["y_test"][probe],
                )
                acc, hard = float((pred == want).mean()), float((pred == want)[needs_position[probe]].mean())
                elapsed = time.perf_counter() - t0
                history.append(
                    {
                        "step": step,
                        "epoch": round(step / per_epoch, 2),
                        "loss": loss_sum / max(seen, 1),
                        "probe_acc": acc,
                        "probe_acc_position_needed": hard,
                        "lr": sched.get_last_lr()[0],
                        "seconds": round(elapsed, 1),
                    }
                )
                log(
                    f"teacher: step {step}/{total} loss {loss_sum / max(seen, 1):.4f} test[:500] acc {acc:.4f} "
                    f"(where position decides: {hard:.3f}) ({elapsed:.0f}s)"
                )
                loss_sum, seen = 0.0, 0
                torch.save(
                    {
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "sched": sched.state_dict(),
                        "step": step,
                        "history": history,
                        "seconds": elapsed,
                    },
                    ckpt,
                )
            if step >= total:
                break
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    test_acc = float((predict(model, d["input_ids_test"], d["attention_mask_test"]).argmax(1) == d["y_test"]).mean())
    record = {
        "config": BERT,
        "params": sum(p.numel() for p in model.parameters()),
        "recipe": {
            "optimizer": "AdamW",
            "lr": a.lr,
            "betas": [0.9, 0.999],
            "weight_decay": 0.01,
            "schedule": f"linear warm-up {warmup} steps, linear decay to 0",
            "grad_clip": 1.0,
            "batch_size": a.batch_size,
            "epochs": a.train_epochs,
            "steps": total,
            "train_sequences": len(ids),
            "batching": "length-sorted within windows of 16 batches, each batch cut to its longest sequence",
            "torch_threads": torch.get_num_threads(),
            "seed": 0,
        },
        "history": history,
        "train_seconds": round(train_s, 1),
        "test_accuracy": test_acc,
        "test_eval_seconds": round(time.perf_counter() - t1, 1),
    }
    model.save_pretrained(str(folder))
    atomic.write_json(record_path, record)
    ckpt.unlink(missing_ok=True)
    log(f"teacher: test accuracy {test_acc:.4f} after {train_s:.0f}s of training; saved to {folder}")
    return record


def write_ids(work: Path, d: dict[str, np.ndarray]) -> Path:
    """The unlabelled recovery data: the TRAIN split's input_ids and attention_mask, no labels."""
    path = work / "ids.npz"
    if not path.exists():
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, input_ids=d["input_ids_train"], attention_mask=d["attention_mask_train"])
    return path


def run_compress(
    work: Path, name: str, ids: Path, a: argparse.Namespace, lr: float | None, log: Callable[[str], None]
) -> tuple[list[str], common.CompressRun]:
    """`compress` into <work>/<name> (bench/common.run_compress: a subprocess of the zoo python
    running this script; a finished run is not repeated, an unfinished one resumes), its training
    stages at --nice and its timing at the script's own niceness. `lr` None: the recovery's default
    learning rate."""
    args = [str(work / "bert"), "--budget", a.budget, "--data", str(ids), "--epochs", str(a.epochs)]
    args += ["--precision", "fp32", "--input-shape", f"1x{MAX_LEN}"]
    if a.max_candidates != 8:
        args += ["--max-candidates", str(a.max_candidates)]
    if lr is not None:
        args += ["--lr", str(lr)]
    log("$ compress " + " ".join(args))

    def on_line(line: str, pid: int) -> None:
        stage = line.strip()
        if stage in ("[accuracy] ...", "[recover] ..."):  # training and its evaluation: nice'd
            set_nice(pid, a.nice, log)
        elif stage == "[recover] done" or stage.startswith("[recover] done ") or stage == "[final] ...":
            set_nice(pid, BASE_NICE, log)
        if not any(noise in line for noise in NOISE):
            log("  | " + line.rstrip())

    return args, common.run_compress(args, work / name, work / f"{name}.log", on_line=on_line)


#: what the runs of 2026-12-06 showed (the JSON carries them; bench/README tells the story)
NOTES = [
    (
        "Hugging Face door: only intermediate_size can change (one width for all layers), so 50% latency at 64 tokens "
        "needs 48 or 16 of the 1024 MLP units (0.478 and 0.463-0.467 of the baseline); which of the two a run "
        "keeps depends on the machine's noise (busy: 16, quieter: 48)."
    ),
    (
        "The MLPs carry less of this task than hoped: removing 95-98% of their width costs 7.5-7.8 points of test "
        "accuracy before recovery (agreement 0.906-0.914 on compress's held-out split)."
    ),
    (
        "Bug found and fixed here (edgeprune/pipeline/recovery/distill.py, FeatureTaps.loss; committed with a test in "
        "57fa43e): loss() rebound the dicts its forward hooks wrote to, so intermediate-feature matching stopped after "
        "the first step and only the logit KL trained. The first run (width 16, lr 0.01) then went from agreement "
        "0.906 to 0.240 (test accuracy 25.0%); with the fix, Distill.fit on the same plan at the same lr reached "
        "agreement 1.000 on the held-out split and 99.8% test accuracy in 291 s (run directly, not through the CLI)."
    ),
    (
        "Bug found and fixed here (edgeprune/pipeline/recovery/trainer.py cross_entropy, distill.py's labelled "
        "branch): labelled recovery of a Hugging Face model crashed (cross_entropy on a SequenceClassifierOutput); "
        "both now take the first output tensor, as top-1 does. `compress bert-dir --data labelled.npz` hit it too."
    ),
    (
        "Labelled fine-tune of the 16-wide plan (compressed_lr0.001's) at lr 0.001, one epoch, clip 5: 99.30% test "
        "accuracy in 162 s, beside 99.35% for its label-free recovery (532 s) at the same lr."
    ),
    (
        "Latency verdicts: with the measurements nice'd on a machine shared with nice'd processes, the narrowest plan "
        "(0.473, interval high 0.478) stayed undecided under the busy margin twice ('machine too noisy to decide'); "
        "this script now runs compress's measurements at its own niceness and only the training nice'd."
    ),
]

#: the niceness this script was started with: compress's latency measurements run at it
BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0)


def set_nice(pid: int, value: int, log: Callable[[str], None]) -> None:
    """Set the niceness of every thread of a process (0: this one; Linux keeps one per thread);
    lowering it back needs privileges, else it stays where it is."""
    pid = pid or os.getpid()
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) != value:
                os.setpriority(os.PRIO_PROCESS, tid, value)
        except PermissionError:
            log(f"(cannot lower the niceness of thread {tid} back to {value}: not permitted; it stays)")
            return
        except ProcessLookupError:
            pass


#: lines of compress's output not echoed here (export warnings; all of it is in <work>/<name>.log)
NOISE = (
    "Warning",
    "padding_length",
    "return opset9",
    "WARNING: failed to run",
    "Writing model shards",
    "Loading weights",
)


def pruned_before_recovery(work: Path, name: str = "compressed") -> torch.nn.Module:
    """The original BERT with the run's plan.json applied by edgeprune (the weights as pruned, before recovery)."""
    from edgeprune.pipeline.loading import load_model
    from edgeprune.pipeline.prune.apply import apply
    from edgeprune.pipeline.prune.plan import Plan

    loaded = load_model(work / "bert", input_shape=(1, MAX_LEN))
    return apply(loaded.model, Plan.load(work / name / "plan.json"), loaded.example_inputs).eval()


def onnx_check(folder_model: Any, onnx_path: Path, d: dict[str, np.ndarray], n: int = 8) -> dict[str, Any]:
    """The written folder's logits against model.onnx's (onnxruntime) on `n` test inputs, one at a
    time. The ONNX inputs are named input0, input1 in the forward's order: input_ids, attention_mask."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    diffs = []
    for i in range(n):
        args = (d["input_ids_test"][i : i + 1], d["attention_mask_test"][i : i + 1])
        got = sess.run(None, dict(zip(names, args)))[0]
        want = predict(folder_model, *args)
        diffs.append(float(np.abs(got - want).max()))
    return {
        "onnx_inputs": names,
        "samples": n,
        "padded_samples": int((d["attention_mask_test"][:n] == 0).any(1).sum()),
        "max_abs_diff": max(diffs),
        "within_1e-4": max(diffs) <= 1e-4,
    }


def test_row(model: Any, d: dict[str, np.ndarray], ref: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray]:
    """Task accuracy on the labelled test split (also where position decides), agreement with the
    teacher's predictions `ref`, size; and the predictions."""
    t0 = time.perf_counter()
    pred = predict(model, d["input_ids_test"], d["attention_mask_test"]).argmax(1)
    needs_position = position_decides(d["input_ids_test"], d["y_test"])
    return {
        "test_accuracy": float((pred == d["y_test"]).mean()),
        "test_accuracy_where_position_decides": float((pred == d["y_test"])[needs_position].mean()),
        "test_agreement": float((pred == (pred if ref is None else ref)).mean()),
        "params": sum(p.numel() for p in model.parameters()),
        "intermediate_size": int(model.bert.encoder.layer[0].intermediate.dense.out_features),
        "seconds": round(time.perf_counter() - t0, 1),
    }, pred


def evaluate(work: Path, name: str, d: dict[str, np.ndarray], log: Callable[[str], None]) -> dict[str, Any]:
    """Task accuracy and agreement with the teacher on the labelled test split of the teacher, the
    pruned model before recovery and the recovered save_pretrained folder."""
    import transformers

    report = json.loads((work / name / "report.json").read_text())
    folder = work / name / (report.get("native") or {}).get("path", "hf_model")
    t0 = time.perf_counter()
    teacher = transformers.BertForSequenceClassification.from_pretrained(str(work / "bert")).eval()
    rows: dict[str, Any] = {}
    rows["teacher"], ref = test_row(teacher, d, None)
    recovered = transformers.BertForSequenceClassification.from_pretrained(str(folder)).eval()
    for label, model in (("pruned", pruned_before_recovery(work, name)), ("recovered", recovered)):
        rows[label], _ = test_row(model, d, ref)
    for label, row in rows.items():
        acc, agree = row["test_accuracy"], row["test_agreement"]
        log(f"{name} {label}: test accuracy {acc:.4f}, agreement with the teacher {agree:.4f}")
    check = onnx_check(recovered, work / name / "model.onnx", d)
    log(f"{name}: hf folder vs model.onnx max |diff| {check['max_abs_diff']:.2e} over {check['samples']} test inputs")
    return {"folder": str(folder), "rows": rows, "onnx_check": check, "seconds": round(time.perf_counter() - t0, 1)}


def finetune(
    work: Path, d: dict[str, np.ndarray], epochs: int, lr: float, log: Callable[[str], None]
) -> dict[str, Any]:
    """The comparison a user with labels makes: edgeprune's labelled fine-tune (FineTune: SGD
    nesterov, cosine) of the same pruned model on the same training rows (the unlabelled file's
    90% split, now with their labels) for the same epochs, batch size, learning rate and gradient
    clipping as the label-free run."""
    import transformers

    from edgeprune.pipeline.data import load_data
    from edgeprune.pipeline.data.sources import ModelInputs
    from edgeprune.pipeline.loading import load_model
    from edgeprune.pipeline.recovery import TrainConfig, top1
    from edgeprune.pipeline.recovery.distill import GRAD_CLIP

    labelled = work / "ids_labelled.npz"
    if not labelled.exists():
        with atomic.atomic_path(labelled) as tmp, open(tmp, "wb") as f:
            np.savez(f, input_ids=d["input_ids_train"], attention_mask=d["attention_mask_train"], y=d["y_train"])
    report = json.loads((work / "compressed" / "report.json").read_text())
    batch_size = int(report["settings"]["batch_size"])
    loaded = load_model(work / "bert", input_shape=(1, MAX_LEN))
    data = load_data(str(labelled), batch_size, seed=0, model=ModelInputs(loaded.example_inputs, loaded.input_names))
    student = pruned_before_recovery(work)
    config = TrainConfig(epochs=epochs, lr=lr, grad_clip=GRAD_CLIP)
    t0 = time.perf_counter()
    result = get_recovery("finetune").fit(student, loaded.model.eval(), data, config, top1, None, log)
    seconds = time.perf_counter() - t0
    teacher = transformers.BertForSequenceClassification.from_pretrained(str(work / "bert")).eval()
    _, ref = test_row(teacher, d, None)
    row, _ = test_row(student, d, ref)  # apply() pruned the transformers module in place
    row = {
        "recovery": "finetune (labelled)",
        "config": {**dataclasses.asdict(config), "batch_size": batch_size, "optimizer": "SGD nesterov, momentum 0.9"},
        "history": result.history,
        "train_seconds": round(seconds, 1),
        "measured_at": common.git_info(),
        "val_top1": result.final_metric,
        **row,
    }
    log(f"labelled fine-tune: test accuracy {row['test_accuracy']:.4f} after {seconds:.0f}s")
    return row


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of the run's report.json this benchmark tabulates."""
    budget, search, recovery = report.get("budget") or {}, report.get("search") or {}, report.get("recovery") or {}
    decision = {k: v for k, v in (budget.get("decision") or {}).items() if k != "rounds_ms"}
    base, final = report.get("baseline") or {}, report.get("final") or {}
    return {
        "met": budget.get("met"),
        "latency_ratio": decision.get("estimate"),
        "latency_ratio_95": [decision.get("low"), decision.get("high")],
        "speedup": report.get("speedup"),
        "baseline_ms": (base.get("latency_ms") or {}).get("median"),
        "final_ms": (final.get("latency_ms") or {}).get("median"),
        "params_baseline": base.get("params"),
        "params_final": final.get("params"),
        "params_ratio": final["params"] / base["params"] if base.get("params") and final.get("params") else None,
        "flops_ratio": final["flops"] / base["flops"] if base.get("flops") and final.get("flops") else None,
        "onnx_max_abs_diff_vs_torch": final.get("max_abs_diff"),
        "decision": decision,
        "accuracy": report.get("accuracy"),
        "data": report.get("data"),
        "candidates_measured": search.get("candidates_measured"),
        "stop_reason": search.get("stop_reason"),
        "search_strategy": search.get("strategy"),
        "groups": report.get("groups"),
        "recovery": {k: recovery.get(k) for k in ("method", "config", "history", "final_metric", "seconds")},
        "timings_s": report.get("timings_s"),
        "native": report.get("native"),
        "noise": report.get("noise"),
    }


def compress_entry(
    work: Path,
    name: str,
    ids: Path,
    a: argparse.Namespace,
    lr: float | None,
    d: dict[str, np.ndarray],
    steps: common.Steps,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One `compress` run and, unless --until compress, its test-split evaluation (a step redone
    when the run is another)."""
    args, run = run_compress(work, name, ids, a, lr, log)
    entry = {
        "command": "compress " + " ".join([*args, "--out", str(work / name)]).replace(str(work), "<work>"),
        "wall_seconds": round(run.seconds, 1),
        "recovery_lr": lr if lr is not None else "the recovery's default",
        "measured_at": run.measured_at,
        **summarise(run.report),
    }
    if a.until != "compress":
        ran = {"command": entry["command"], "measured_at": run.measured_at}
        entry["eval"] = steps.run(f"{name}_eval", ran, lambda: evaluate(work, name, d, log))
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache of every stage (default /tmp/bert_distill)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--train", type=int, default=20_000, help="training sequences (default 20000)")
    p.add_argument("--test", type=int, default=2_000, help="test sequences (default 2000)")
    p.add_argument("--train-epochs", type=int, default=2, help="teacher epochs (default 2)")
    p.add_argument("--batch-size", type=int, default=32, help="teacher batch size (default 32)")
    p.add_argument(
        "--lr", type=float, default=3e-4, help="teacher peak learning rate (default 3e-4; 1e-3 collapsed to chance)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads here (default 1, as compress uses)")
    p.add_argument("--budget", default="50%")
    p.add_argument("--epochs", type=int, default=1, help="recovery epochs, label-free and --finetune alike (default 1)")
    p.add_argument(
        "--recovery-lr",
        type=float,
        help="compress --lr for the recovery, label-free and --finetune alike (default: distillation's own, 0.01)",
    )
    p.add_argument(
        "--also-lr",
        type=float,
        nargs="*",
        default=[],
        help="also run compress recovering at each of these learning rates (into <work>/compressed_lr<LR>)",
    )
    p.add_argument(
        "--max-candidates",
        type=int,
        default=16,
        help="compress --max-candidates (default 16: with the default 8, a run beside other processes ended "
        "'machine too noisy to decide' with candidates 4 and 5 read under the budget but undecided)",
    )
    p.add_argument("--finetune", action="store_true", help="also fine-tune the pruned model on the labels, same epochs")
    p.add_argument(
        "--nice",
        type=int,
        default=10,
        help="niceness of the training (teacher, compress's recovery, fine-tune); compress's latency measurements "
        "run at the niceness this script started with (default 10)",
    )
    p.add_argument("--until", choices=("data", "teacher", "compress", "eval"), help="stop after this stage")
    a = p.parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {**header("bert_distill"), "budget": a.budget, "epochs": a.epochs, "work": str(a.work)}
    result["protocol"] = {
        "runtime": "ort-cpu",
        "threads": 1,
        "precision": "fp32",
        "tokens": MAX_LEN,
        "latency": "compress's own verdict: median ratio to the baseline, timed interleaved",
        "accuracy": f"task accuracy on the {a.test} labelled test sequences (never given to compress), "
        "padded to 64 tokens with their attention masks; agreement = same arg-max as the teacher",
        "unlabelled_data": f"input_ids and attention_mask of the {a.train} training sequences, no labels "
        "(compress holds 1000 out for its own agreement metric)",
    }
    result["notes"] = NOTES
    result["task"] = {
        "vocab": VOCAB,
        "max_len": MAX_LEN,
        "min_len": MIN_LEN,
        "train": a.train,
        "test": a.test,
        "rule": "label = argmax_k (2 e_k + l_k), unique; set k = {10+10k..19+10k}, e_k in 0..2 occurrences among "
        "the first 16 tokens, l_k in 0..3 after them; filler 100..999, [CLS]=1 first, "
        "padding 0 with an attention mask",
        "seeds": {"train": 0, "test": 1},
    }
    d = build_data(a.work, a.train, a.test, log)
    result["task"]["test_stats"] = rule_check({k[:-5]: v for k, v in d.items() if k.endswith("_test")})
    if a.until == "data":
        return 0
    set_nice(0, a.nice, log)
    result["teacher"] = train_teacher(a.work, d, a, log)
    set_nice(0, BASE_NICE, log)
    if a.until == "teacher":
        return 0
    ids = write_ids(a.work, d)
    steps = common.Steps(a.work, log)
    result["compress"] = compress_entry(a.work, "compressed", ids, a, a.recovery_lr, d, steps, log)
    atomic.write_json(a.out, result)
    if a.until in ("compress", "eval"):
        return 0
    if a.finetune:
        set_nice(0, a.nice, log)
        lr = a.recovery_lr or get_recovery("distill").default_lr
        ran = {"epochs": a.epochs, "lr": lr, "compressed": result["compress"]["measured_at"]}
        result["finetune"] = steps.run("finetune", ran, lambda: finetune(a.work, d, a.epochs, lr, log))
        set_nice(0, BASE_NICE, log)
        atomic.write_json(a.out, result)
    for lr in a.also_lr:
        name = f"compressed_lr{lr:g}"
        result.setdefault("compress_other_lr", {})[f"{lr:g}"] = compress_entry(a.work, name, ids, a, lr, d, steps, log)
        atomic.write_json(a.out, result)
    atomic.write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
