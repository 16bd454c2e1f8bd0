"""`apply(model, plan)`: physically remove the units a plan drops.

The model is traced once (graph.py); every channel group's coupled layers (residual adds, concats,
depthwise and grouped convs, norms, attention projections) are cut in the original coordinates
(removal.py), attention heads by attention.py, whole residual blocks by blocks.py, last. The
result is checked: it must run on the example inputs and produce outputs of the original shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.pipeline.prune import attention, blocks, removal
from edgeprune.pipeline.prune.graph import Graph, GraphError
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.space import HEADS_SUFFIX, plan_changes


def apply(model: nn.Module, plan: Plan, example_inputs: Sequence[torch.Tensor], check: bool = True) -> nn.Module:
    """Prune `model` in place to `plan` and return it.

    `check` compares output shapes before and after; it is off only where the caller checks more
    than that itself and wants the exception rather than an error message.
    """
    ref_shapes = modelrun.output_shapes(modelrun.run(model, example_inputs)) if check else None
    if any(g.removed for g in plan.groups.values()):
        graph = Graph(model, example_inputs)
        _check_sizes(model, graph, plan)
        try:
            cuts, heads = plan_changes(graph, plan)
            with torch.no_grad():
                removal.remove(model, cuts)
                for site, removed in heads.items():
                    attention.keep_heads(model, site, [h for h in range(site.num_heads) if h not in set(removed)])
        except GraphError as err:
            raise EdgepruneError(
                f"the plan cannot be applied to this model: {first_line(err)}; "
                "apply the plan to the architecture it was made for"
            ) from None
        except Exception as err:  # noqa: BLE001 - a layer torch-pruning's functions cannot cut
            raise EdgepruneError(
                f"cutting the plan's channels failed ({type(err).__name__}: {first_line(err)}); "
                "mark the layer it names --unprunable"
            ) from None
    blocks.bypass(model, plan.removed_blocks, example_inputs)
    if check:
        shapes = modelrun.output_shapes(modelrun.run(model, example_inputs))
        if shapes != ref_shapes:
            raise EdgepruneError(
                f"pruning changed the output shapes {ref_shapes} -> {shapes}; mark the output layer unprunable"
            )
    return model


def _check_sizes(model: nn.Module, graph: Graph, plan: Plan) -> None:
    """Refuse a plan made for another architecture, naming the first group that does not fit."""
    roots = {name: size for name, _, size in graph.roots()}
    sites = {s.name + HEADS_SUFFIX: s.num_heads for s in graph.sites}
    for gid, g in plan.groups.items():
        if not g.removed:
            continue
        if g.kind == "heads":
            if sites.get(gid) != g.size:
                raise EdgepruneError(
                    f"plan group {gid} does not match an attention module with {g.size} heads in this model"
                )
            continue
        if gid not in roots:
            _submodule(model, gid)
            raise EdgepruneError(
                f"plan group {gid} is not a prunable layer of this model; use the plan made for this architecture"
            )
        if roots[gid] % g.size:  # a chunked layer's group counts one unit per channel of each part
            raise EdgepruneError(
                f"plan group {gid} expects {g.size} channels but the model has {roots[gid]}; "
                "apply the plan to the architecture it was made for"
            )


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise EdgepruneError(
            f"plan names layer {name!r}, which this model does not have; use the plan made for this architecture"
        ) from None
