"""`compress`: the command line. One module per subcommand (bench.py, check.py, agent.py, train.py,
demo.py), each registering its help, parser and run (`_base.subcommand`); compress.py is the main
command; every module of this package is imported here, so a subcommand is one file.

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
import importlib
import pkgutil
import sys
import traceback
from collections.abc import Callable, Sequence

from rich.markup import escape

from edgeprune.cli import compress
from edgeprune.cli._base import SUBCOMMANDS, err_console
from edgeprune.errors import EdgepruneError, first_line

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

#: every command's parser, for --help and for the tests that check each option is documented
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {"compress": compress.parser} | {
    name: sub.parser for name, sub in SUBCOMMANDS.items()
}


def start() -> str:
    """What `compress` alone prints."""
    return (
        """\
compress MODEL --budget BUDGET [options]   prune MODEL until it meets BUDGET, measured on --runtime
compress SUBCOMMAND --help                 one of the subcommands below

  compress demo                                         see it work on the shipped CIFAR-10 ResNet-20
  compress model.pt --budget 20ms --input-shape 1x3x224x224 --out out/
  compress model_sd.pt --arch resnet56 --budget 50% --data cifar10.npz --out out/

subcommands:
"""
        + "\n".join(f"  {name:<7} {sub.help}" for name, sub in SUBCOMMANDS.items())
        + """

compress --help lists every option; errors are one line (exit 2), `check` over budget exits 1."""
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: exit 0 done, 1 over budget, 2 bad input (one line), 3 a bug (one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        if not argv:
            print(start(), file=sys.stderr)
            return 2
        if argv[0] in SUBCOMMANDS:
            return SUBCOMMANDS[argv[0]].run(argv[1:])
        return compress.run(argv)
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
