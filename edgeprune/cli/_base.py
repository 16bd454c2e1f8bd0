"""What every subcommand's parser and run share: one-line errors from argparse, options whose
range and default come from `edgeprune.bounds` and `Settings`, the runtime options, and the
registry each subcommand module adds itself to (`subcommand`)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from edgeprune.bounds import Bound
from edgeprune.errors import EdgepruneError

if TYPE_CHECKING:  # imported where it is used: `compress --help` stays quick
    from edgeprune.runtime_bench import Runtime

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """`compress NAME ...`: its one line for `compress --help`, its parser and what it runs."""

    name: str
    help: str
    parser: Callable[[], argparse.ArgumentParser]
    run: Callable[[list[str]], int]


#: the subcommands, in the order `compress --help` lists them; `compress` itself is `COMPRESS`
SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(name: str, help: str, parser: Callable[[], argparse.ArgumentParser]) -> Callable[..., Any]:
    """Register the decorated `run(argv) -> exit status` as `compress NAME`."""

    def register(run: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        SUBCOMMANDS[name] = Subcommand(name, help, parser, run)
        return run

    return register


def progress(line: str) -> None:
    err_console.print(line, markup=False)


class Help(argparse.RawDescriptionHelpFormatter):
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


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line like every other error (no usage dump)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(formatter_class=Help, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise EdgepruneError(f"{self.prog}: {message}; see {self.prog} --help")


def bounded(p: argparse.ArgumentParser, flag: str, bound: Bound, help: str, **kwargs: Any) -> None:
    p.add_argument(flag, type=bound.parser(), help=help, **kwargs)


def setting(p: argparse.ArgumentParser, field: str, help: str, **kwargs: Any) -> None:
    """An option that sets a `Settings` field: its flag, range and default come from Settings."""
    from edgeprune.pipeline.settings import BOUNDS, Settings

    flag, bound = BOUNDS[field]
    default = {f.name: f.default for f in dataclasses.fields(Settings)}[field]
    kwargs.setdefault("default", default)
    bounded(p, flag, bound, help, **kwargs)


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runtime",
        default="ort-cpu",
        help="target runtime: ort-cpu, ort-mobile[:arm|amd64], openvino-cpu[:f32|bf16], "
        "torch-cpu, remote:HOST:PORT/RUNTIME (a `compress agent`), ...; `compress bench` also takes all",
    )
    setting(p, "threads", "intra-op threads of the runtime (1 times one inference at a time on one core)")
    setting(p, "warmup", "untimed runs before each measurement")
    setting(
        p,
        "repeats",
        "timed runs per measurement (raised for sub-millisecond models so a measurement lasts 0.5 s; "
        "refused when one measurement would take over 10 min)",
    )
    p.add_argument("--debug", action="store_true", help="print tracebacks of internal errors")


def data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        help="labelled: data.npz (x_train, y_train, x_test, y_test) or an image folder (train/<class>/, "
        "val/<class>/); unlabelled (recovered by distillation from the unpruned model, measured by fidelity to it): a "
        "folder of images, or inputs.npz / .pt keyed by input name (input_ids, attention_mask, pixel_values, or x); "
        "or module:function returning (train_loader, val_loader)",
    )
    setting(p, "epochs", "training budget in epochs (default 1 for recovery)")
    setting(p, "steps", "training budget in optimizer steps (instead of --epochs)")
    setting(p, "lr", "peak learning rate (default: the method's own)")
    setting(p, "batch_size", "training batch size")


def load_runtime(name: str, threads: int) -> Runtime:
    from edgeprune.runtime_bench import get_runtime

    rt = get_runtime(name, threads=threads)
    ok, why = rt.available()
    if not ok:
        raise EdgepruneError(f"runtime {name} cannot run here: {why}")
    return rt


def noise_note(*stats: Any) -> str:
    """'; noisy measurement: why' when any of the LatencyStats is noisy."""
    noise = "; ".join(s.noise for s in stats if s.noise)
    return f"; noisy measurement ({noise}): re-run on a quieter machine before trusting it" if noise else ""


def existing(path: str) -> None:
    if not Path(path).is_file():
        raise EdgepruneError(f"{path} does not exist; pass the path of an exported .onnx model")
