"""`compress MODEL --budget BUDGET`: the main command (every option is a `Settings` field or a method's)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from edgeprune import bounds
from edgeprune.cli._base import (
    SUBCOMMANDS,
    Parser,
    bounded,
    common,
    data_args,
    progress,
    setting,
)
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.summary import summary_table


def parser(prog: str = "compress") -> argparse.ArgumentParser:
    from edgeprune.pipeline.methods import method_names
    from edgeprune.pipeline.search import SEARCHES
    from edgeprune.pipeline.settings import DEPTHS, PRECISIONS, RECOVERIES, Settings

    p = Parser(
        prog=prog,
        usage="%(prog)s MODEL --budget BUDGET [options]  |  %(prog)s SUBCOMMAND ...",
        description="Prune MODEL physically until it meets --budget, measured on the target runtime.\n\n"
        "subcommands (compress SUBCOMMAND --help):\n"
        + "\n".join(f"  {name:<7} {sub.help}" for name, sub in SUBCOMMANDS.items()),
    )
    p.add_argument(
        "model",
        nargs="?",
        help="torch.save()d nn.Module; a state dict with --arch; an ultralytics checkpoint "
        "(best.pt); a Hugging Face save_pretrained() folder (omit it with "
        "--method pfs and --arch to start from random weights)",
    )
    p.add_argument(
        "--budget",
        required=True,
        help="20ms, p90<=20ms, 2x (speed-up), 50%% (of the baseline latency), 300MFLOPs, 1.5Mparams; "
        "a language model: 25ms/token or 50%% (of its time per token)",
    )
    p.add_argument(
        "--input-shape",
        help="e.g. 1x3x224x224 (default: the model's own: the registry's for --arch, an ultralytics "
        "checkpoint's training size, a Hugging Face config's; for a Hugging Face text model 1x256 sets 256 tokens). "
        "Several inputs or integer inputs: shapes joined by '+', ':int' for token ids in [0, 2) or ':intN' in [0, N), "
        "e.g. 1x128:int30522+1x128:int2",
    )
    p.add_argument(
        "--arch",
        help="for state dicts: a registry name, timm:NAME, torchvision:NAME or package.module:factory; "
        "timm:NAME / torchvision:NAME without MODEL: random weights, for latency alone",
    )
    bounded(p, "--num-classes", bounds.count(), "classifier width for --arch (default: read from the state dict)")
    p.add_argument("--method", default="l1", choices=method_names(), help="channel importance")
    setting(p, "round_to", "keep widths on multiples of this (16 suits CPU runtimes)")
    setting(
        p,
        "tol",
        "the search stops at a candidate decided between 2%% (a drift allowance) and this fraction under the budget",
    )
    setting(p, "max_candidates", "most pruned candidates the search measures")
    p.add_argument(
        "--unprunable",
        default="",
        help="comma-separated layer names to leave whole, as model.named_modules() gives them (e.g. layer1.0.conv1,fc)",
    )
    p.add_argument(
        "--search",
        choices=SEARCHES.names(),
        default=Settings.search,
        help="; ".join(f"{name}: {SEARCHES.get(name).summary}" for name in SEARCHES.names()).replace("%", "%%"),
    )
    p.add_argument(
        "--depth",
        choices=DEPTHS,
        default=Settings.depth,
        help="remove whole residual blocks (layers) too: where channels alone cannot reach the budget (auto), "
        "always (on), instead of channels (only), or never (off); blocks are scored on --data, else on the "
        "example inputs",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32: prune only; int8: quantize (post-training, calibrated on --data) and search the widths with "
        "int8 candidates; auto (the default with --data; fp32 without): int8 of the unpruned model first, else the "
        "widths searched with int8 and with float32 candidates, the least pruning "
        "that meets the budget wins (int8 and auto need --data)",
    )
    setting(
        p,
        "max_accuracy_drop",
        "refuse (exit 2, naming the best plan found) a result whose top-1 measured on the runtime "
        "falls more than this below the baseline's (0.01 = one point; needs --data)",
    )
    setting(
        p,
        "analysis_time_s",
        "seconds that finding what can be pruned may take; layers not analysed by then are "
        "left whole (and say so in the report)",
        dest="analysis_time_s",
        metavar="SECONDS",
    )
    p.add_argument(
        "--out", default="out", help="output folder; it must not hold the model or data, and one run at a time uses it"
    )
    data_args(p)
    p.add_argument(
        "--recover",
        choices=RECOVERIES,
        help="recovery after pruning (default with --data: the method's own, finetune for the criteria, "
        "scratch for pfs, distill for tas, adversarial (PGD) fine-tuning for anp; none without --data)",
    )
    setting(p, "temperature", "distillation temperature")
    setting(p, "alpha", "weight of the distillation term")
    p.add_argument("--metric", help="module:function(model, val_loader) -> float, for models that are not classifiers")
    bounded(p, "--slimming-lambda", bounds.NON_NEGATIVE, "slimming: L1 weight on BN scales", default=1e-4)
    bounded(p, "--slimming-epochs", bounds.count(), "slimming: sparsity-training epochs (default 1)")
    bounded(p, "--slimming-steps", bounds.count(), "slimming: sparsity-training steps (instead of epochs)")
    bounded(p, "--pfs-lambda", bounds.NON_NEGATIVE, "pfs: L1 weight on the mean |gate|", default=0.5)
    bounded(p, "--tas-arch-lr", bounds.POSITIVE, "tas: Adam learning rate of the width/depth logits", default=0.05)
    bounded(
        p,
        "--search-epochs",
        bounds.count(),
        "pfs / tas / flop / anp / sanp: epochs of gate, mask or SPM learning, or of architecture search (default 1)",
    )
    bounded(p, "--search-steps", bounds.count(), "pfs / tas / flop / anp / sanp: the same in steps (instead of epochs)")
    setting(p, "pgd_steps", "anp and --recover adversarial: PGD steps of the training attack (eps 8/255, step 2/255)")
    bounded(p, "--sanp-cost-weight", bounds.NON_NEGATIVE, "sanp: weight of the cost objective", default=2.0)
    setting(
        p,
        "context",
        "language models: the budget is the time per generated token with a key/value cache of this many tokens "
        "(default 1024, or the model's max_position_embeddings - 1 if fewer)",
    )
    setting(p, "prompt_tokens", "language models: the prompt whose time to the first token is reported")
    common(p)
    return p


def _method_options(a: argparse.Namespace) -> dict:
    """The options of the chosen --method, from its own flags (other methods' flags are ignored)."""
    if a.method == "slimming":
        return {"lam": a.slimming_lambda, "epochs": a.slimming_epochs, "steps": a.slimming_steps}
    if a.method == "pfs":
        return {"lam": a.pfs_lambda, "epochs": a.search_epochs, "steps": a.search_steps}
    if a.method == "tas":
        return {"arch_lr": a.tas_arch_lr, "epochs": a.search_epochs, "steps": a.search_steps, "round_to": a.round_to}
    if a.method == "flop":
        return {"epochs": a.search_epochs, "steps": a.search_steps}
    if a.method == "anp":
        return {"pgd_steps": a.pgd_steps, "epochs": a.search_epochs, "steps": a.search_steps}
    if a.method == "sanp":
        return {"cost_weight": a.sanp_cost_weight, "epochs": a.search_epochs, "steps": a.search_steps}
    return {}


def run(argv: list[str]) -> int:
    """`compress MODEL --budget BUDGET ...`: the whole pipeline; exit 0 when the budget is met, 1 when not."""
    from edgeprune.pipeline.compress import Settings, compress
    from edgeprune.pipeline.loading import parse_example_inputs, parse_input_shape

    a = parser().parse_args(argv)
    settings = Settings(
        budget=a.budget,
        runtime=a.runtime,
        threads=a.threads,
        method=a.method,
        round_to=a.round_to,
        tol=a.tol,
        warmup=a.warmup,
        repeats=a.repeats,
        max_candidates=a.max_candidates,
        unprunable=tuple(n for n in a.unprunable.split(",") if n),
        data=a.data,
        recover=a.recover,
        epochs=a.epochs,
        steps=a.steps,
        lr=a.lr,
        batch_size=a.batch_size,
        temperature=a.temperature,
        alpha=a.alpha,
        metric=a.metric,
        method_options=_method_options(a),
        depth=a.depth,
        search=a.search,
        pgd_steps=a.pgd_steps,
        analysis_time_s=a.analysis_time_s,
        precision=a.precision,
        max_accuracy_drop=a.max_accuracy_drop,
        context=a.context,
        prompt_tokens=a.prompt_tokens,
    )
    inputs = parse_example_inputs(a.input_shape) if a.input_shape else None
    shape = tuple(inputs[0].shape) if inputs else parse_input_shape(a.input_shape) if a.input_shape else None
    loaded = _model_or_untrained(a, shape, inputs)
    result = compress(loaded, settings, a.out, progress=progress)
    native = result.report.get("native")
    own = f"; in {native['ecosystem']}'s own format: {native['path']} ({native.get('load', '')})" if native else ""
    summary_table(result.report)
    listed = result.report.get("outputs")  # a decoder's report lists its own
    files = (
        ", ".join([*(f"{name} ({what})" for name, what in listed.items()), "report.json", "report.md"])
        if listed
        else "model.onnx, model.pt, state_dict.pt, plan.json, report.json, report.md, widths.svg"
    )
    Console().print(f"outputs in {Path(a.out).resolve()}: {files}{own}", markup=False)
    return 0 if result.met else 1


def _model_or_untrained(a: argparse.Namespace, shape: tuple[int, ...] | None, inputs: Any = None) -> Any:
    """MODEL, or for a method that learns from random weights (pfs), a fresh --arch."""
    from edgeprune import ecosystems
    from edgeprune.pipeline.data import load_data
    from edgeprune.pipeline.loading import load_model, untrained
    from edgeprune.pipeline.methods import METHODS

    if a.model is not None or ecosystems.for_arch(a.arch) is not None:  # timm:NAME alone: random weights
        return load_model(a.model, arch=a.arch, input_shape=shape, num_classes=a.num_classes, example_inputs=inputs)
    scratch = [n for n in METHODS.names() if METHODS.get(n).from_scratch]
    if not METHODS.get(a.method).from_scratch:
        raise EdgepruneError(
            f"no MODEL given: --method {a.method} prunes a trained model; pass its file, "
            f"or use --method {' / '.join(scratch)} with --arch to start from random weights"
        )
    if a.arch is None or a.data is None:
        raise EdgepruneError(f"no MODEL given: --method {a.method} from random weights needs --arch NAME and --data")
    if a.recover == "distill":
        raise EdgepruneError(
            "no MODEL given, so there is no trained teacher to distill from; use --recover scratch (the default)"
        )
    data = load_data(a.data, a.batch_size, seed=0)
    shape = shape or ((1, *data.input_shape) if data.input_shape else None)
    return untrained(a.arch, a.num_classes or data.num_classes, shape)
