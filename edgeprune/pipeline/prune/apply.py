"""`apply(model, plan)`: physically remove the units a plan drops.

Channel groups are removed through torch-pruning's DependencyGraph (every coupled layer — residual
adds, concats, depthwise convs, norms — shrinks together); attention heads through `attention.py`;
whole residual blocks through `blocks.py`, last, so the graph is traced on the full model.
The result is checked: it must run on the example inputs and produce outputs of the original shapes.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.prune import attention, blocks, graph
from edgeprune.pipeline.prune.plan import Plan

HEADS_SUFFIX = ":heads"


def apply(model: nn.Module, plan: Plan, example_inputs: Sequence[torch.Tensor], check: bool = True) -> nn.Module:
    """Prune `model` in place to `plan` and return it.

    `check` compares output shapes before and after; it is off only inside the probe, which does its
    own checking and wants the exception rather than an error message.
    """
    ref_shapes = modelrun.output_shapes(modelrun.run(model, example_inputs)) if check else None
    channel_groups = {gid: g for gid, g in plan.groups.items() if g.kind == "channels" and g.removed}
    if channel_groups:
        dg = graph.build_graph(model, example_inputs)
        for gid, g in channel_groups.items():
            module = _submodule(model, gid)
            have = graph.out_channels(dg, module)
            if have != g.size:
                raise EdgepruneError(
                    f"plan group {gid} expects {g.size} channels but the model has {have}; "
                    "apply the plan to the architecture it was made for"
                )
            graph.group_of(dg, module, g.removed).prune()
    sites = {s.name + HEADS_SUFFIX: s for s in attention.find_attention(model)}
    for gid, g in plan.groups.items():
        if g.kind == "heads" and g.removed:
            if gid not in sites or sites[gid].num_heads != g.size:
                raise EdgepruneError(f"plan group {gid} does not match an attention module with {g.size} heads in this model")
            attention.keep_heads(sites[gid], g.keep)
    blocks.bypass(model, plan.removed_blocks)
    if check:
        shapes = modelrun.output_shapes(modelrun.run(model, example_inputs))
        if shapes != ref_shapes:
            raise EdgepruneError(f"pruning changed the output shapes {ref_shapes} -> {shapes}; mark the output layer unprunable")
    return model


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise EdgepruneError(f"plan names layer {name!r}, which this model does not have; use the plan made for this architecture") from None
