"""`compress`: the command line.

    compress MODEL --budget 20ms [--runtime ort-cpu] [--input-shape 1x3x224x224] [--out DIR]
    compress bench MODEL.onnx [--runtime ort-cpu] [--threads 1]
    compress check MODEL.onnx --budget 20ms [--baseline BASE.onnx]   (exit 1 when over budget)
    compress demo [--out DIR]

Every option is checked where it is parsed (numbers against `edgeprune.bounds`, whose ranges --help
prints), so a mistake is one line on stderr and exit status 2 before any work; a model over budget
in `check` is exit 1; a bug is exit 3 with one line (--debug prints its traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeprune import bounds
from edgeprune.bounds import Bound
from edgeprune.errors import EdgepruneError, first_line

if TYPE_CHECKING:  # imported where it is used: `compress --help` stays quick
    from edgeprune.runtime_bench import Runtime

#: one line each, for `compress --help` and for `compress` alone
SUBCOMMANDS = {
    "bench": "time an exported .onnx on one runtime, or on every runtime available here (--runtime all)",
    "check": "CI gate: exit 0 when an .onnx is within --budget, 1 when over it",
    "agent": "serve measurements for --runtime remote:HOST:PORT/RUNTIME on an edge host",
    "train": "train a registry architecture on --data (the baselines the demo and benchmarks start from)",
    "demo": "compress the shipped CIFAR-10 ResNet-20 to half its latency, then distill it (a few minutes)",
}
START = (
    """\
compress MODEL --budget BUDGET [options]   prune MODEL until it meets BUDGET, measured on --runtime
compress SUBCOMMAND --help                 one of the subcommands below

  compress demo                                         see it work on the shipped CIFAR-10 ResNet-20
  compress model.pt --budget 20ms --input-shape 1x3x224x224 --out out/
  compress model_sd.pt --arch resnet56 --budget 50% --data cifar10.npz --out out/

subcommands:
"""
    + "\n".join(f"  {name:<7} {line}" for name, line in SUBCOMMANDS.items())
    + """

compress --help lists every option; errors are one line (exit 2), `check` over budget exits 1."""
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _progress(line: str) -> None:
    err_console.print(line, markup=False)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        if not argv:
            print(START, file=sys.stderr)
            return 2
        if argv[0] in SUBCOMMANDS:
            return {"agent": _agent, "bench": _bench, "check": _check, "demo": _demo, "train": _train}[argv[0]](
                argv[1:]
            )
        return _compress(argv)
    except EdgepruneError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}")  # a message may hold [brackets]: pip extras
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted; run the same command again to resume from the last finished stage")
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence: never a raw traceback
        if isinstance(err, ModuleNotFoundError) and (err.name or "").partition(".")[0] == "torch":
            err_console.print(
                "[bold red]error:[/] this command needs PyTorch, which is not installed here (an agent-only "
                "install, like the image's agent target, runs `compress agent` alone); install edgeprune "
                "with its dependencies for the rest"
            )
            return 2
        if debug:
            traceback.print_exc()
        err_console.print(
            f"[bold red]internal error:[/] {type(err).__name__}: {escape(first_line(err))} "
            "(a bug in edgeprune; re-run with --debug for the traceback and report it)"
        )
        return 3


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its allowed range (when bounded) and its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        extra = []
        bound = getattr(action.type, "bound", None)
        if isinstance(bound, Bound):
            extra.append(bound.describe())
        default = action.default
        if (
            action.option_strings
            and default is not None
            and not isinstance(default, bool)
            and default not in ("", argparse.SUPPRESS)
        ):
            extra.append("default %(default)s")
        return f"{text} [{'; '.join(extra)}]" if extra else text


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line like every other error (no usage dump)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(formatter_class=_Help, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise EdgepruneError(f"{self.prog}: {message}; see {self.prog} --help")


def _bounded(p: argparse.ArgumentParser, flag: str, bound: Bound, help: str, **kwargs: Any) -> None:
    p.add_argument(flag, type=bound.parser(), help=help, **kwargs)


def _setting(p: argparse.ArgumentParser, field: str, help: str, **kwargs: Any) -> None:
    """An option that sets a `Settings` field: its flag, range and default come from Settings."""
    from edgeprune.pipeline.settings import BOUNDS, Settings

    flag, bound = BOUNDS[field]
    default = {f.name: f.default for f in dataclasses.fields(Settings)}[field]
    kwargs.setdefault("default", default)
    _bounded(p, flag, bound, help, **kwargs)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runtime",
        default="ort-cpu",
        help="target runtime: ort-cpu, ort-mobile[:arm|amd64], openvino-cpu[:f32|bf16], "
        "torch-cpu, remote:HOST:PORT/RUNTIME (a `compress agent`), ...; `compress bench` also takes all",
    )
    _setting(p, "threads", "intra-op threads of the runtime (1 times one inference at a time on one core)")
    _setting(p, "warmup", "untimed runs before each measurement")
    _setting(
        p,
        "repeats",
        "timed runs per measurement (raised for sub-millisecond models so a measurement lasts 0.5 s; "
        "refused when one measurement would take over 10 min)",
    )
    p.add_argument("--debug", action="store_true", help="print tracebacks of internal errors")


def _compress_parser(prog: str = "compress") -> argparse.ArgumentParser:
    from edgeprune.pipeline.methods import method_names
    from edgeprune.pipeline.search import SEARCHES
    from edgeprune.pipeline.settings import DEPTHS, PRECISIONS, RECOVERIES, Settings

    p = _Parser(
        prog=prog,
        usage="%(prog)s MODEL --budget BUDGET [options]  |  %(prog)s SUBCOMMAND ...",
        description="Prune MODEL physically until it meets --budget, measured on the target runtime.\n\n"
        "subcommands (compress SUBCOMMAND --help):\n"
        + "\n".join(f"  {name:<7} {line}" for name, line in SUBCOMMANDS.items()),
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
    _bounded(p, "--num-classes", bounds.count(), "classifier width for --arch (default: read from the state dict)")
    p.add_argument("--method", default="l1", choices=method_names(), help="channel importance")
    _setting(p, "round_to", "keep widths on multiples of this (16 suits CPU runtimes)")
    _setting(
        p,
        "tol",
        "the search stops at a candidate decided between 2%% (a drift allowance) and this fraction under the budget",
    )
    _setting(p, "max_candidates", "most pruned candidates the search measures")
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
    _setting(
        p,
        "max_accuracy_drop",
        "refuse (exit 2, naming the best plan found) a result whose top-1 measured on the runtime "
        "falls more than this below the baseline's (0.01 = one point; needs --data)",
    )
    _setting(
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
    _data_args(p)
    p.add_argument(
        "--recover",
        choices=RECOVERIES,
        help="recovery after pruning (default with --data: the method's own, finetune for the criteria, "
        "scratch for pfs, distill for tas, adversarial (PGD) fine-tuning for anp; none without --data)",
    )
    _setting(p, "temperature", "distillation temperature")
    _setting(p, "alpha", "weight of the distillation term")
    p.add_argument("--metric", help="module:function(model, val_loader) -> float, for models that are not classifiers")
    _bounded(p, "--slimming-lambda", bounds.NON_NEGATIVE, "slimming: L1 weight on BN scales", default=1e-4)
    _bounded(p, "--slimming-epochs", bounds.count(), "slimming: sparsity-training epochs (default 1)")
    _bounded(p, "--slimming-steps", bounds.count(), "slimming: sparsity-training steps (instead of epochs)")
    _bounded(p, "--pfs-lambda", bounds.NON_NEGATIVE, "pfs: L1 weight on the mean |gate|", default=0.5)
    _bounded(p, "--tas-arch-lr", bounds.POSITIVE, "tas: Adam learning rate of the width/depth logits", default=0.05)
    _bounded(
        p,
        "--search-epochs",
        bounds.count(),
        "pfs / tas / flop / anp / sanp: epochs of gate, mask or SPM learning, or of architecture search (default 1)",
    )
    _bounded(
        p, "--search-steps", bounds.count(), "pfs / tas / flop / anp / sanp: the same in steps (instead of epochs)"
    )
    _setting(p, "pgd_steps", "anp and --recover adversarial: PGD steps of the training attack (eps 8/255, step 2/255)")
    _bounded(p, "--sanp-cost-weight", bounds.NON_NEGATIVE, "sanp: weight of the cost objective", default=2.0)
    _setting(
        p,
        "context",
        "language models: the budget is the time per generated token with a key/value cache of this many tokens "
        "(default 1024, or the model's max_position_embeddings - 1 if fewer)",
    )
    _setting(p, "prompt_tokens", "language models: the prompt whose time to the first token is reported")
    _common(p)
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


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        help="labelled: data.npz (x_train, y_train, x_test, y_test) or an image folder (train/<class>/, "
        "val/<class>/); unlabelled (recovered by distillation from the unpruned model, measured by fidelity to it): a "
        "folder of images, or inputs.npz / .pt keyed by input name (input_ids, attention_mask, pixel_values, or x); "
        "or module:function returning (train_loader, val_loader)",
    )
    _setting(p, "epochs", "training budget in epochs (default 1 for recovery)")
    _setting(p, "steps", "training budget in optimizer steps (instead of --epochs)")
    _setting(p, "lr", "peak learning rate (default: the method's own)")
    _setting(p, "batch_size", "training batch size")


def _compress(argv: list[str]) -> int:
    from edgeprune.pipeline.compress import Settings, compress
    from edgeprune.pipeline.loading import parse_example_inputs, parse_input_shape

    a = _compress_parser().parse_args(argv)
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
    result = compress(loaded, settings, a.out, progress=_progress)
    native = result.report.get("native")
    own = f"; in {native['ecosystem']}'s own format: {native['path']} ({native.get('load', '')})" if native else ""
    if result.report.get("kind") == "decoder":
        from edgeprune.pipeline.decoder.report import table

        table(result.report)
        files = "model.onnx (the decode step), prefill.onnx, plan.json, report.json, report.md"
    else:
        _summary_table(result.report)
        files = "model.onnx, model.pt, state_dict.pt, plan.json, report.json, report.md, widths.svg"
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


def _summary_table(rep: dict) -> None:
    from edgeprune.pipeline.report import busy_line, noise_line, p90_ratio

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


def _load_runtime(name: str, threads: int) -> Runtime:
    from edgeprune.runtime_bench import get_runtime

    rt = get_runtime(name, threads=threads)
    ok, why = rt.available()
    if not ok:
        raise EdgepruneError(f"runtime {name} cannot run here: {why}")
    return rt


def _bench_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="compress bench", description="Time an exported model on a runtime (or --runtime all).")
    p.add_argument("model", help="a .onnx file")
    p.add_argument("--input-shape", help="e.g. 1x3x224x224 (default: the shape the .onnx declares)")
    _common(p)
    return p


def _bench(argv: list[str]) -> int:
    """Time an ONNX file on one runtime, or on every runtime available here (`--runtime all`)."""
    from edgeprune.pipeline.loading import parse_input_shape
    from edgeprune.pipeline.measure import check_time_bound
    from edgeprune.runtime_bench import get_runtime
    from edgeprune.runtime_bench.inputs import example_inputs_for
    from edgeprune.runtime_bench.registry import onnx_runtimes

    a = _bench_parser().parse_args(argv)
    _existing(a.model)
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


def _agent_parser() -> argparse.ArgumentParser:
    from edgeprune.runtime_bench.agent import MAX_UPLOAD

    p = _Parser(prog="compress agent", description="Measure uploaded models on this host's runtimes, one at a time.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all)")
    _bounded(p, "--port", Bound(int, 0, 65535), "port to listen on (0: any free port)", default=8765)
    p.add_argument("--token-file", help="file holding the shared token (else EDGEPRUNE_AGENT_TOKEN[_FILE])")
    _bounded(p, "--max-upload-mb", bounds.POSITIVE, "largest model upload accepted, in MiB", default=MAX_UPLOAD / 2**20)
    return p


def _agent(argv: list[str]) -> int:
    """Serve measurements for `--runtime remote:HOST:PORT/RUNTIME` (runtime_bench/agent.py)."""
    from edgeprune.runtime_bench.agent import Agent, make_server
    from edgeprune.runtime_bench.remote import agent_token

    a = _agent_parser().parse_args(argv)
    if a.token_file:
        try:
            token = Path(a.token_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise EdgepruneError(
                f"cannot read --token-file {a.token_file}: {err.strerror}; write the shared token into it"
            ) from None
    else:
        token = agent_token()
    agent = Agent(token, int(a.max_upload_mb * 2**20))
    try:
        server = make_server(agent, a.host, a.port)
    except OSError as err:
        raise EdgepruneError(f"cannot listen on {a.host}:{a.port} ({err.strerror}); pick another --port") from None
    Console().print(
        f"edgeprune agent on http://{a.host}:{server.server_address[1]} (runtimes: "
        f"{', '.join(n for n, r in agent.runtimes()['runtimes'].items() if r['available'])})"
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _check_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="compress check", description="Fail (exit 1) when MODEL.onnx is over --budget.")
    p.add_argument("model", help="a .onnx file")
    p.add_argument(
        "--budget", required=True, help="20ms, p90<=20ms, 1.5Mparams; a relative budget (2x, 50%%) needs --baseline"
    )
    p.add_argument("--baseline", help="the reference .onnx for relative budgets (timed interleaved with MODEL)")
    p.add_argument("--input-shape", help="e.g. 1x3x224x224 (default: the shape the .onnx declares)")
    _common(p)
    return p


def _check(argv: list[str]) -> int:
    """CI gate: exit 0 within budget, 1 over it."""
    from edgeprune.exporters.onnx import onnx_param_count
    from edgeprune.pipeline.budget import parse_budget
    from edgeprune.pipeline.loading import parse_input_shape
    from edgeprune.pipeline.measure import check_time_bound
    from edgeprune.runtime_bench.base import interleave
    from edgeprune.runtime_bench.inputs import example_inputs_for

    a = _check_parser().parse_args(argv)
    _existing(a.model)
    budget = parse_budget(a.budget)
    if budget.metric == "flops":
        raise EdgepruneError(
            "check reads FLOPs budgets from PyTorch models only; use a latency or params budget for an ONNX file"
        )
    if budget.metric == "params":
        value = float(onnx_param_count(a.model))
        ok = budget.met_by(value)
        Console().print(
            f"{a.model}: {value / 1e6:.4f} M params, budget {budget.describe()}: {'OK' if ok else 'OVER BUDGET'}"
        )
        return 0 if ok else 1
    if budget.relative and not a.baseline:
        raise EdgepruneError(f"budget {a.budget} is relative; pass --baseline BASE.onnx to compare against")
    rt = _load_runtime(a.runtime, a.threads)
    shape = parse_input_shape(a.input_shape) if a.input_shape else None
    inputs = example_inputs_for(a.model, shape)
    session = rt.load(a.model)
    check_time_bound(rt, session, inputs, a.warmup, a.repeats)
    stat = "p90" if budget.statistic == "p90" else "median"
    if budget.relative:
        _existing(a.baseline)
        base_s, model_s = interleave(
            rt, [rt.load(a.baseline), session], [example_inputs_for(a.baseline, shape), inputs], a.warmup, a.repeats
        )
        ratio = getattr(model_s, stat) / getattr(base_s, stat)
        ok = ratio <= budget.value
        Console().print(
            f"{a.model}: {stat} {getattr(model_s, stat):.3f} ms = {ratio:.3f} x baseline {getattr(base_s, stat):.3f} "
            f"ms (interleaved, n={model_s.n}); budget {budget.describe()}: "
            f"{'OK' if ok else 'OVER BUDGET'}{_noise_note(base_s, model_s)}"
        )
        return 0 if ok else 1
    s = rt.measure(session, inputs, a.warmup, a.repeats)
    ok = budget.met_by(getattr(s, stat))
    Console().print(
        f"{a.model}: {stat} {getattr(s, stat):.3f} ms (p90 {s.p90:.3f}, n={s.n}, {rt.name}, {a.threads} thread(s)); "
        f"budget {budget.describe()}: {'OK' if ok else 'OVER BUDGET'}{_noise_note(s)}"
    )
    return 0 if ok else 1


def _noise_note(*stats: Any) -> str:
    """'; noisy measurement: why' when any of the LatencyStats is noisy."""
    noise = "; ".join(s.noise for s in stats if s.noise)
    return f"; noisy measurement ({noise}): re-run on a quieter machine before trusting it" if noise else ""


#: the demo's recovery: distillation epochs and batch on the shipped 1,000-image subset. At 50 % of
#: the latency on ort-cpu here the search keeps about 0.21 of the FLOPs (ORT's per-layer overhead on
#: a 32x32 network), top-1 0.10 after pruning; distilled (one thread, same plan): 6 epochs at batch
#: 128, 0.654 in 19 s; 25 at 32, 0.766 in 99 s; 30 at 64, 0.770 in 104 s (0.76 from epoch 18)
DEMO_EPOCHS = 30
DEMO_BATCH = 64


def _demo_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="compress demo", description="Compress the shipped CIFAR-10 ResNet-20 to 50%% of its measured latency."
    )
    p.add_argument("--budget", default="50%", help="as for compress: 50%% of the baseline latency, 2x, 20ms, ...")
    _bounded(p, "--epochs", bounds.count(), "distillation epochs on the shipped demo subset", default=DEMO_EPOCHS)
    p.add_argument("--out", default="out/demo", help="output folder")
    _common(p)
    return p


def _demo(argv: list[str]) -> int:
    """The built-in demo: the shipped CIFAR-10 ResNet-20, pruned to half its latency, distilled briefly."""
    import torch

    from edgeprune import models
    from edgeprune.assets import asset
    from edgeprune.pipeline.compress import Settings, compress
    from edgeprune.pipeline.loading import from_module

    a = _demo_parser().parse_args(argv)
    # One PyTorch thread for the distillation: on 2 cores with another process busy, two OpenMP
    # threads took 7-21 s per epoch against 4 s for one (measured), and a first run must not crawl.
    torch.set_num_threads(1)
    settings = Settings(
        budget=a.budget,
        runtime=a.runtime,
        threads=a.threads,
        warmup=a.warmup,
        repeats=a.repeats,
        data=str(asset("cifar10_demo.npz")),
        recover="distill",
        epochs=a.epochs,
        batch_size=DEMO_BATCH,
        precision="fp32",
    )  # the demo shows pruning and recovery; int8 alone would meet 50 % here
    model = models.create("resnet20", num_classes=10)
    model.load_state_dict(torch.load(asset("resnet20_cifar10.pt"), map_location="cpu", weights_only=True))
    Console().print(
        f"[bold]demo:[/] CIFAR-10 ResNet-20 ({asset('resnet20_cifar10.json').name} has its recipe), budget {a.budget} "
        f"of its measured latency on {a.runtime}, {a.threads} thread(s); then {a.epochs} epoch(s) of distillation from "
        "the unpruned model on the shipped 1,000-image subset. Accuracy is on the subset's 500 test images."
    )
    loaded = from_module(model, arch="resnet20", num_classes=10, source="edgeprune/assets/resnet20_cifar10.pt")
    result = compress(loaded, settings, a.out, progress=_progress)
    _summary_table(result.report)
    Console().print(f"report: {Path(a.out).resolve() / 'report.md'}")
    return 0 if result.met else 1


def _train_parser() -> argparse.ArgumentParser:
    from edgeprune import models

    p = _Parser(prog="compress train", description="Train --arch on --data; writes the state dict and a recipe JSON.")
    p.add_argument(
        "--arch", required=True, help=f"registry name ({', '.join(models.available())}) or package.module:factory"
    )
    _bounded(p, "--num-classes", bounds.count(), "classifier width (default: the number of classes in the data)")
    p.add_argument("--schedule", choices=["onecycle", "cosine"], default="onecycle", help="learning-rate schedule")
    p.add_argument(
        "--out",
        required=True,
        help="the state dict file to write, e.g. checkpoints/resnet20_cifar10.pt (its recipe goes beside it as .json)",
    )
    _bounded(p, "--seed", Bound(int, 0), "seed of the initialization, shuffling and augmentation", default=0)
    p.add_argument("--debug", action="store_true", help="print tracebacks of internal errors")
    _data_args(p)
    return p


def _train(argv: list[str]) -> int:
    """Train a registry architecture (the baselines the benchmarks and the demo start from)."""
    from edgeprune.pipeline.training import train_baseline

    a = _train_parser().parse_args(argv)
    if a.data is None:
        raise EdgepruneError("compress train needs --data")
    out = Path(a.out)
    if out.is_dir():
        raise EdgepruneError(
            f"--out {out} is a folder; compress train writes one state dict file, e.g. --out {out / (a.arch + '.pt')}"
        )
    if out.exists() and out.resolve() == Path(a.data).resolve():
        raise EdgepruneError(f"--out {out} is the --data file; write the state dict to a new file")
    recipe = train_baseline(
        a.arch,
        a.data,
        out,
        epochs=a.epochs,
        steps=a.steps,
        lr=a.lr or 0.1,
        schedule=a.schedule,
        batch_size=a.batch_size,
        num_classes=a.num_classes,
        seed=a.seed,
        log=_progress,
    )
    if recipe is not None:
        Console().print(
            f"{a.arch}: test {recipe['metric']} {recipe['test_metric']:.4f} after {recipe['epochs_run']} epoch(s); "
            f"wrote {a.out} and {recipe['recipe_path']}"
        )
    return 0


#: every command's parser, for --help and for the tests that check each option is documented
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "compress": _compress_parser,
    "bench": _bench_parser,
    "check": _check_parser,
    "agent": _agent_parser,
    "demo": _demo_parser,
    "train": _train_parser,
}


def _existing(path: str) -> None:
    if not Path(path).is_file():
        raise EdgepruneError(f"{path} does not exist; pass the path of an exported .onnx model")


if __name__ == "__main__":
    sys.exit(main())
