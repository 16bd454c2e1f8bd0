"""`compress demo`: the shipped CIFAR-10 ResNet-20 to half its latency, then distilled."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from edgeprune import bounds
from edgeprune.cli._base import (
    Parser,
    bounded,
    common,
    progress,
    subcommand,
)
from edgeprune.pipeline.summary import summary_table

HELP = "compress the shipped CIFAR-10 ResNet-20 to half its latency, then distill it (a few minutes)"


#: the demo's recovery: distillation epochs and batch on the shipped 3,000-image subset. At 50 % of
#: the latency on ort-cpu here the search keeps about 0.21-0.29 of the FLOPs (ORT's per-layer
#: overhead on a 32x32 network), top-1 0.10 after pruning. Distilled (one thread, one 0.21 plan,
#: top-1 on the 500 test images, the epoch kept): 30 epochs of 1,000 images 0.776 (106 s, the
#: demo until 2026-12-07, 0.752-0.824 over six runs); 15 of 2,000 0.770 (same steps: more images
#: alone do not help); 60 of 1,000 0.802; 30 of 2,000 0.806; 20 of 3,000 0.826 (224 s, 2x the steps)
DEMO_EPOCHS = 20


DEMO_BATCH = 64


def _demo_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="compress demo", description="Compress the shipped CIFAR-10 ResNet-20 to 50%% of its measured latency."
    )
    p.add_argument("--budget", default="50%", help="as for compress: 50%% of the baseline latency, 2x, 20ms, ...")
    bounded(p, "--epochs", bounds.count(), "distillation epochs on the shipped demo subset", default=DEMO_EPOCHS)
    p.add_argument("--out", default="out/demo", help="output folder")
    common(p)
    return p


@subcommand("demo", HELP, _demo_parser)
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
        "the unpruned model on the shipped 3,000-image subset. Accuracy is on the subset's 500 test images."
    )
    loaded = from_module(model, arch="resnet20", num_classes=10, source="edgeprune/assets/resnet20_cifar10.pt")
    result = compress(loaded, settings, a.out, progress=progress)
    summary_table(result.report)
    Console().print(f"report: {Path(a.out).resolve() / 'report.md'}")
    return 0 if result.met else 1
