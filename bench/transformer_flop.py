"""FLOP against plain magnitude (L1) pruning on a small character-level transformer language model.

FLOP's paper reports bits per character on enwik8; here the model is the registry's `char_lm`
(2 causal pre-norm blocks, d = 128, 4 heads, MLP 512, 128-character context) trained on the text
that ships with edgeprune (its own .py and .md files, last 10% held out; data/text.py; the corpus
size and SHA-256 are in the JSON), since nothing can be downloaded here.

Protocol:
- The baseline is trained with the shared trainer (SGD + Nesterov, one-cycle, `--train-steps`), or
  loaded from `--checkpoint` when that file exists (it is written there otherwise).
- For every budget in `--budgets` (fractions of the baseline's measured latency on ONNX Runtime CPU,
  1 thread, graph optimization ALL, the ratio judged interleaved), two full `compress` runs:
  * flop: the MLP Linears factorized (SVD), hard-concrete gates on ranks, MLP hidden units and
    heads, `--flop-steps` of weights + gates under the augmented Lagrangian toward the budget's cost
    fraction, the measured-latency search on the gates' global ranking, merge-back, then
    `--recover-steps` of fine-tuning, all at `--flop-lr` (0.01: SGD on a factorized pair P, Q moves
    W = PQ about 2 sigma times further than on W itself, sigma its singular values; at 0.05 the
    factorized model diverged, 2.02 -> 4.58 bpc in 60 steps, where the dense one did not);
  * l1: magnitude (L1) pruning of the same Linears' structured units (MLP hidden units and heads,
    uniform per layer, the same measured-latency search), then `--recover-steps` + `--flop-steps` of
    fine-tuning at `--lr` (0.05), so both rows get the same number of training steps after the
    trained baseline.
- Every row is re-timed against the baseline interleaved (`--repeats`), and reports parameters,
  FLOPs, bits per character on the full held-out split before and after fine-tuning.

    .venv/bin/python bench/transformer_flop.py                 # the full run (see bench/README.md)
    .venv/bin/python bench/transformer_flop.py --smoke         # minutes: proves the script end to end
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import header, run_row  # noqa: E402
from edgeprune import atomic, models  # noqa: E402
from edgeprune.models.char_lm import CONTEXT  # noqa: E402
from edgeprune.pipeline.compress import Settings  # noqa: E402
from edgeprune.pipeline.counting import count  # noqa: E402
from edgeprune.pipeline.data import text  # noqa: E402
from edgeprune.pipeline.loading import from_module  # noqa: E402
from edgeprune.pipeline.measure import TargetMeasurer  # noqa: E402
from edgeprune.pipeline.recovery.evaluate import bits_per_char, top1  # noqa: E402
from edgeprune.pipeline.recovery.trainer import TrainConfig, train  # noqa: E402
from edgeprune.runtime_bench import get_runtime  # noqa: E402

DATA = "edgeprune.pipeline.data.text:char_corpus"
METRIC = "edgeprune.pipeline.recovery.evaluate:bits_per_char"
SMOKE = {"train_steps": 30, "flop_steps": 10, "recover_steps": 5, "budgets": [0.6], "repeats": 50}


def baseline(path: Path | None, steps: int, lr: float, log: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained char LM: loaded from `path` when it exists, else trained (and saved there)."""
    torch.manual_seed(0)
    model = models.create("char_lm", num_classes=text.VOCAB)
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), {"checkpoint": str(path), "trained_here": False}
    train_b, _ = text.char_corpus()
    config = TrainConfig(steps=steps, lr=lr, weight_decay=0.0, schedule="onecycle")
    result = train(model, train_b, config, log=log, label="char_lm")
    if path is not None:
        with atomic.atomic_path(path) as tmp:
            torch.save(model.state_dict(), tmp)
    return model.eval(), {
        "checkpoint": str(path) if path else None,
        "trained_here": True,
        "config": vars(config),
        "history": result.history,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--budgets", nargs="+", type=float, default=[0.8, 0.6, 0.4], help="latency fractions of the baseline"
    )
    p.add_argument("--train-steps", type=int, default=4000, help="baseline training steps (batch 32 x 128 characters)")
    p.add_argument("--train-lr", type=float, default=0.1, help="peak one-cycle lr (0.5 diverged in a trial)")
    p.add_argument("--flop-steps", type=int, default=600, help="FLOP's joint weight + gate training steps")
    p.add_argument("--recover-steps", type=int, default=400, help="fine-tuning steps after pruning, every row")
    p.add_argument("--lr", type=float, default=0.05, help="l1's fine-tuning learning rate")
    p.add_argument(
        "--flop-lr",
        type=float,
        default=0.01,
        help="FLOP's weight learning rate, joint training and fine-tuning "
        "(SGD on P and Q steps W = PQ ~2 sigma times harder: 0.05 diverged)",
    )
    p.add_argument("--repeats", type=int, default=400, help="timed runs per model in the interleaved re-timing")
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="the trained baseline: loaded if it exists, else written"
    )
    p.add_argument("--smoke", action="store_true", help=f"tiny settings {SMOKE}, result labelled smoke")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if a.smoke:
        for k, v in SMOKE.items():
            setattr(a, k, v)
    out = a.out or REPO / "bench" / "results" / ("transformer_flop_smoke.json" if a.smoke else "transformer_flop.json")
    log = lambda line: print(line, flush=True)  # noqa: E731
    torch.set_num_threads(1)

    base, recipe = baseline(a.checkpoint, a.train_steps, a.train_lr, log)
    tokens = torch.randint(0, 2, (1, CONTEXT), generator=torch.Generator().manual_seed(0))
    _, val = text.char_corpus()
    work = Path(tempfile.mkdtemp(prefix="transformer_flop_"))
    measurer = TargetMeasurer(get_runtime("ort-cpu", threads=1), (tokens,), work, repeats=a.repeats)
    result: dict[str, Any] = {
        **header("transformer_flop"),
        "smoke": a.smoke,
        "protocol": {
            "runtime": "ort-cpu",
            "threads": 1,
            "graph_optimization": "ALL",
            "input": "1 x 128 token ids",
            "latency": "median ratio to the baseline, timed interleaved",
            "quality": "bits per character, full held-out split",
            "training": "flop: --flop-steps joint + --recover-steps fine-tune at --flop-lr; l1: --recover-steps + "
            "--flop-steps fine-tune at --lr",
        },
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "corpus": text.describe(),
        "baseline": {
            **recipe,
            "bpc": bits_per_char(base, val),
            "next_char_top1": top1(base, val),
            **vars(count(base, (tokens,))),
        },
        "rows": [],
    }
    log(f"baseline: {result['baseline']['bpc']:.3f} bpc, {result['baseline']['params'] / 1e6:.3f} M params")
    for budget in a.budgets:
        for method, steps, lr, options in (
            ("flop", a.recover_steps, a.flop_lr, {"steps": a.flop_steps, "lr": a.flop_lr}),
            ("l1", a.recover_steps + a.flop_steps, a.lr, {}),
        ):
            settings = Settings(
                precision="fp32",
                budget=f"{budget * 100:g}%",
                method=method,
                data=DATA,
                metric=METRIC,
                recover="finetune",
                steps=steps,
                lr=lr,
                repeats=50,
                method_options=options,
            )
            loaded = from_module(copy.deepcopy(base), (tokens,), arch="char_lm", num_classes=text.VOCAB)
            row = run_row(
                f"{method} {budget:g}",
                loaded,
                settings,
                base,
                measurer,
                tokens,
                work,
                log,
                metric=METRIC.rpartition(":")[2],
            )
            result["rows"].append(row | {"budget": budget})
            atomic.write_json(out, result)
    atomic.write_json(out, result)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
