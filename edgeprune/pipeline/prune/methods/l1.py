"""L1-norm filter pruning (Li, Kadav, Durdanovic, Samet & Graf, "Pruning Filters for Efficient
ConvNets", ICLR 2017).

A filter's importance is the sum of its absolute kernel weights. Where channels are coupled (a
residual stream, a concat, a depthwise conv following its producer) every producing layer's filter
norm for that channel is summed, so the group is ranked as one unit, as the paper does for the
layers of a residual stage. A head's importance is the L1 norm of its q, k, v rows and proj columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from edgeprune.pipeline.prune import attention
from edgeprune.pipeline.prune.graph import Graph, Touch
from edgeprune.pipeline.prune.methods.base import Importance, Scores, register
from edgeprune.pipeline.prune.space import HEADS_SUFFIX, PruningSpace


@register
class L1Importance(Importance):
    name = "l1"
    reference = "Li et al., Pruning Filters for Efficient ConvNets, ICLR 2017"

    @torch.no_grad()
    def scores(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None
    ) -> Scores:
        if not space.groups:
            return {}
        graph = Graph(model, example_inputs)
        sites = {s.name + HEADS_SUFFIX: s for s in graph.sites}
        return {
            g.id: np.array(attention.head_weight_norms(model, sites[g.id]))
            if g.kind == "heads"
            else filter_norms(model, graph.coupled(g.id, range(g.size)), g.size)
            for g in space.groups
        }


#: the layers whose rows are filters: what writes a group's channels
FILTER_KINDS = ("conv", "gconv", "dwconv", "convT", "linear")


def filter_norms(model: nn.Module, touches: Sequence[Touch], size: int) -> np.ndarray:
    """Each unit's L1 filter norm, summed over every layer that writes its channel."""
    total = torch.zeros(size, dtype=torch.float64)
    for t in touches:
        if t.side != "out" or t.kind not in FILTER_KINDS:
            continue
        w = cast(torch.Tensor, model.get_submodule(t.name).weight).detach().abs()  # conv / convT / linear
        w = w.transpose(0, 1) if t.kind == "convT" else w  # a transposed conv's outputs are its weight's dim 1
        norms = w.reshape(w.shape[0], -1).sum(dim=1).double()
        total.index_add_(0, torch.tensor(t.roots, dtype=torch.long), norms[list(t.idxs)])
    return total.numpy()
