"""`compress train`: train a registry architecture on --data (the baselines the demo and benchmarks start from)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from edgeprune import bounds
from edgeprune.bounds import Bound
from edgeprune.cli._base import (
    Parser,
    bounded,
    data_args,
    progress,
    subcommand,
)
from edgeprune.errors import EdgepruneError

HELP = "train a registry architecture on --data (the baselines the demo and benchmarks start from)"


def _train_parser() -> argparse.ArgumentParser:
    from edgeprune import models

    p = Parser(prog="compress train", description="Train --arch on --data; writes the state dict and a recipe JSON.")
    p.add_argument(
        "--arch", required=True, help=f"registry name ({', '.join(models.available())}) or package.module:factory"
    )
    bounded(p, "--num-classes", bounds.count(), "classifier width (default: the number of classes in the data)")
    p.add_argument("--schedule", choices=["onecycle", "cosine"], default="onecycle", help="learning-rate schedule")
    p.add_argument(
        "--out",
        required=True,
        help="the state dict file to write, e.g. checkpoints/resnet20_cifar10.pt (its recipe goes beside it as .json)",
    )
    bounded(p, "--seed", Bound(int, 0), "seed of the initialization, shuffling and augmentation", default=0)
    p.add_argument("--debug", action="store_true", help="print tracebacks of internal errors")
    data_args(p)
    return p


@subcommand("train", HELP, _train_parser)
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
        log=progress,
    )
    if recipe is not None:
        Console().print(
            f"{a.arch}: test {recipe['metric']} {recipe['test_metric']:.4f} after {recipe['epochs_run']} epoch(s); "
            f"wrote {a.out} and {recipe['recipe_path']}"
        )
    return 0
