"""Exact FLOPs and parameter counts of a model, as reported and as budgeted.

"FLOPs" here are multiply-accumulates counted by torch-pruning's op counter, the pruning
literature's convention (ResNet-56 = 125 MFLOPs).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn


@dataclasses.dataclass(frozen=True)
class Counts:
    flops: int
    params: int


def count(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> Counts:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            flops, params = tp.utils.count_ops_and_params(model, tuple(example_inputs))
    finally:
        model.train(was_training)
    return Counts(int(flops), int(params))
