"""The decoder benchmark's teacher: a Llama-architecture language model trained here from scratch
on text every machine has offline (the Python standard library's own sources), with a byte-level
BPE tokenizer trained by `tokenizers` on the same text. Deterministic (seeded); the folder it
writes (save_pretrained, tokenizer beside it) is what bench/llm_decoder.py compresses.

    .venv-zoo/bin/python bench/llm_teacher.py --out bench/work/llm_teacher --minutes 35

Corpus: every .py file under the interpreter's standard library (site-packages, tests and
idlelib left out), in sorted order; one file in ten (by sorted position) is held out from
training and written as `heldout.txt`, the rest as `train.txt`.
"""

from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
from pathlib import Path

import torch

#: the shape the issue asks for: 8 layers, hidden 512, 8 query / 2 key-value heads of 64, MLP 1536
CONFIG = {
    "vocab_size": 4096,
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "rope_theta": 10000.0,
}
SEQ_LEN = 256
BATCH = 16
LR = 1e-3
SKIPPED = ("site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__")


def corpus(out: Path) -> tuple[Path, Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not set(p.relative_to(root).parts) & set(SKIPPED))
    train, held = [], []
    for i, f in enumerate(files):
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        (held if i % 10 == 0 else train).append(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text("\n".join(train))
    (out / "heldout.txt").write_text("\n".join(held))
    return out / "train.txt", out / "heldout.txt"


def tokenizer(train_txt: Path, folder: Path) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=CONFIG["vocab_size"],
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train([str(train_txt)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(str(folder))
    return fast


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="bench/work/llm_teacher")
    p.add_argument("--minutes", type=float, default=35.0, help="training time")
    a = p.parse_args()
    import transformers

    torch.manual_seed(0)
    out = Path(a.out)
    data_dir = out.parent / "llm_text"
    train_txt, held_txt = corpus(data_dir)
    t0 = time.time()
    tok = tokenizer(train_txt, out)
    ids = torch.tensor(tok(train_txt.read_text())["input_ids"], dtype=torch.long)  # type: ignore[operator]
    held = torch.tensor(tok(held_txt.read_text())["input_ids"], dtype=torch.long)  # type: ignore[operator]
    print(f"tokenizer {time.time() - t0:.0f} s; {ids.numel()} training tokens, {held.numel()} held out", flush=True)
    config = transformers.LlamaConfig(**CONFIG, bos_token_id=0, eos_token_id=0)
    model = transformers.LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, betas=(0.9, 0.95))
    n = ids.numel() // SEQ_LEN
    seqs = ids[: n * SEQ_LEN].view(n, SEQ_LEN)
    gen = torch.Generator().manual_seed(0)
    budget_s, start, step, history = a.minutes * 60, time.time(), 0, []
    est_steps = None
    model.train()
    while time.time() - start < budget_s:
        batch = seqs[torch.randint(0, n, (BATCH,), generator=gen)]
        elapsed = time.time() - start
        frac = min(1.0, elapsed / budget_s)
        lr = LR * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            history.append({"step": step, "loss": loss.item(), "s": round(time.time() - start, 1)})
            print(f"step {step} loss {loss.item():.3f} lr {lr:.2e} {time.time() - start:.0f}s", flush=True)
            if est_steps is None:
                est_steps = int(budget_s / ((time.time() - start) / step))
    model.eval()
    with torch.no_grad():
        m = held.numel() // SEQ_LEN
        hs = held[: m * SEQ_LEN].view(m, SEQ_LEN)[:64]
        nll = sum(model(input_ids=hs[i : i + 8], labels=hs[i : i + 8]).loss.item() for i in range(0, len(hs), 8))
        ppl = math.exp(nll / math.ceil(len(hs) / 8))
    model.generation_config.eos_token_id = 0
    model.save_pretrained(str(out))
    summary = {
        "config": CONFIG,
        "steps": step,
        "tokens": step * BATCH * SEQ_LEN,
        "seconds": round(time.time() - start, 1),
        "heldout_perplexity": ppl,
        "train_tokens": int(ids.numel()),
        "heldout_tokens": int(held.numel()),
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))


if __name__ == "__main__":
    main()
