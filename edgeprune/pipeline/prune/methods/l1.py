"""L1-norm filter pruning (Li, Kadav, Durdanovic, Samet & Graf, "Pruning Filters for Efficient
ConvNets", ICLR 2017).

A filter's importance is the sum of its absolute kernel weights. Where channels are coupled (a
residual stream, a concat, a depthwise conv following its producer) every producing layer's filter
norm for that channel is summed, so the group is ranked as one unit, as the paper does for the
layers of a residual stage. A head's importance is the L1 norm of its q, k, v rows and proj columns.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edgeprune.pipeline.prune import attention, graph
from edgeprune.pipeline.prune.apply import HEADS_SUFFIX
from edgeprune.pipeline.prune.methods.base import Importance, Scores, register
from edgeprune.pipeline.prune.space import PruningSpace


@register
class L1Importance(Importance):
    name = "l1"
    reference = "Li et al., Pruning Filters for Efficient ConvNets, ICLR 2017"

    @torch.no_grad()
    def scores(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None
    ) -> Scores:
        out: Scores = {}
        channel_groups = [g for g in space.groups if g.kind == "channels"]
        if channel_groups:
            dg = graph.build_graph(model, example_inputs)
            for g in channel_groups:
                out[g.id] = self._group_scores(dg, model.get_submodule(g.id), g.size)
        sites = {s.name + HEADS_SUFFIX: s for s in attention.find_attention(model)}
        for g in space.groups:
            if g.kind == "heads":
                s = sites[g.id]
                out[g.id] = np.array(
                    [
                        float(s.qkv.weight[s.head_rows([h])].abs().sum() + s.proj.weight[:, s.head_cols(h)].abs().sum())
                        for h in range(s.num_heads)
                    ]
                )
        return out

    @staticmethod
    def _group_scores(dg: Any, root: nn.Module, size: int) -> np.ndarray:
        total = torch.zeros(size, dtype=torch.float64)
        for item in graph.group_of(dg, root, range(size)):
            layer = item.dep.target.module
            if not (dg.is_out_channel_pruning_fn(item.dep.handler) and isinstance(layer, graph.ROOT_TYPES)):
                continue
            w = layer.weight.detach().abs()
            norms = w.reshape(w.shape[0], -1).sum(dim=1).double()
            for hyb, root_idx in zip(item.idxs, item.root_idxs):
                total[root_idx] += norms[getattr(hyb, "idx", hyb)]
        return total.numpy()
