"""Estimates of every channel group's drop at every width from a few backward passes.

Measuring a group's drop costs a pruned copy and two forward passes over the calibration images,
so a map measured group by group grows with the model (timm's ResNet-50 at 224 px: 74 trials,
279 s). Removing a set S of a group's units is multiplying their channels by masks m_u = 0 instead
of 1; to first order in the masks the outputs then change by J_x dm, and the mean squared change

    E_x ||J_x dm||^2 / D = E_x E_eps [(eps . J_x dm)^2] / D = E_x E_eps [(sum_{u in S} delta_u(x, eps))^2] / D,
    delta_u(x, eps) = d(eps . output(x)) / d m_u,   eps ~ N(0, I)

is a squared sum of per-unit gradients of a random projection of the outputs (Hutchinson's
estimator; the Gauss-Newton / Fisher view of channel saliency, as in Theis et al. 2018 and Liu et
al. 2021 "Group Fisher pruning"). Class logits are projected on noise centred across classes
(softmax ignores a shift): their change, not the softmax's Fisher, which a confident model
saturates to zero while a cut still moves its KL. The masks are per image, so one backward pass
of a batch gives every image's delta for every unit of every group at once (gating.hook_points:
where each group's channels are produced, after their BatchNorm). The square is taken per removed
*set*, so units that cancel or reinforce each other are priced together.

First-order, these price small cuts well and large ones off (ReLUs and BatchNorm react
nonlinearly), and they are not on the KL's scale: `sensitivity.sensitivity` measures a few groups
and maps the estimates onto the measurements (`calibrated`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.pipeline.learned import gating
from edgeprune.pipeline.prune.space import PruningSpace

#: images per backward pass (per-image masks: memory grows with the batch)
CHUNK = 8
#: random label / projection draws per image (each one backward pass)
PROBES = 2


def estimates(
    model: nn.Module,
    space: PruningSpace,
    example_inputs: Sequence[torch.Tensor],
    images: torch.Tensor | tuple[torch.Tensor, ...],
    widths: dict[str, list[int]],
    removed: dict[str, dict[int, list[int]]],
) -> dict[str, dict[int, float]]:
    """Each channel group's estimated drop at each of `widths[group]` (the units `removed[group][w]`
    removed), on `images`; groups without a place to mask (attention heads) are left out."""
    points = gating.hook_points(model, space, example_inputs)
    ids = list(dict.fromkeys(p.group for p in points))
    sizes = {g.id: g.size for g in space.groups}
    deltas: dict[str, list[torch.Tensor]] = {g: [] for g in ids}  # per group: (images x probes) x units
    n = modelrun.batch_len(images)
    generator = torch.Generator().manual_seed(0)
    masks: dict[str, torch.Tensor] = {}  # this chunk's, per image and unit

    def masked(point: gating.HookPoint, out: torch.Tensor) -> torch.Tensor:
        return out * point.per_sample(masks[point.group], out)

    with modelrun.eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        for start in range(0, n, CHUNK):
            chunk = (
                tuple(t[start : start + CHUNK] for t in images)
                if isinstance(images, tuple)
                else images[start : start + CHUNK]
            )
            rows = modelrun.batch_len(chunk)
            masks.update({g: torch.ones(rows, sizes[g], requires_grad=True) for g in ids})
            with gating.channel_hooks(model, points, masked):
                outputs = [o for o in modelrun.flatten_outputs(modelrun.call(model, chunk)) if o.is_floating_point()]
            for _ in range(PROBES):
                loss = torch.stack([_probe(o, generator) for o in outputs]).sum()
                grads = torch.autograd.grad(loss, [masks[g] for g in ids], retain_graph=True, allow_unused=True)
                for g, grad in zip(ids, grads):
                    got = cast("torch.Tensor | None", grad)  # None: no output depends on the group
                    deltas[g].append(torch.zeros(rows, sizes[g]) if got is None else got.detach())
    out: dict[str, dict[int, float]] = {}
    for g in ids:
        d = torch.cat(deltas[g]).double()
        out[g] = {w: 0.5 * float((d[:, removed[g][w]].sum(1) ** 2).mean()) if removed[g][w] else 0.0 for w in widths[g]}
    return out


def _probe(output: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A projection of the output on Gaussian noise (centred across classes for 2-D logits), scaled
    so that the square of its gradient's sum over removed units, halved, is the mean squared change
    per value."""
    out = output.float()
    noise = torch.randn(out.shape, generator=generator)
    if out.dim() == 2:
        noise = noise - noise.mean(1, keepdim=True)
    per_image = max(1, out[0].numel()) if out.dim() > 0 else 1
    return (noise * out).sum() * (2.0 / per_image) ** 0.5


def calibrated(
    estimate: dict[str, dict[int, float]], measured: dict[str, dict[int, float]]
) -> dict[str, dict[int, float]]:
    """The estimates mapped onto the measurements: log(drop) = a + b log(estimate), fitted on the
    widths measured (each keeps its measured figure); b is kept between 0.5 and 2 so that a few
    points cannot turn the order of the estimates over."""
    pairs = [
        (np.log(estimate[g][w]), np.log(d))
        for g, ds in measured.items()
        for w, d in ds.items()
        if g in estimate and w in estimate[g] and estimate[g][w] > 0 and d > 0
    ]
    if len(pairs) >= 3:
        x, y = np.array(pairs).T
        b = float(np.clip(np.polyfit(x, y, 1)[0], 0.5, 2.0)) if np.ptp(x) > 0 else 1.0
        a = float(np.median(y - b * x))
    elif pairs:
        b, a = 1.0, float(np.median([y - x for x, y in pairs]))
    else:
        b, a = 1.0, 0.0
    return {
        g: {w: measured.get(g, {}).get(w, float(np.exp(a) * e**b) if e > 0 else 0.0) for w, e in ws.items()}
        for g, ws in estimate.items()
    }
