"""What ThiNet and regression-based channel pruning share: per-channel contributions to the next
layer's outputs, sampled on calibration data, and least-squares fixes of that layer afterwards.

For a group's channel c and a *consumer* (a Conv2d or Linear that reads the group's channels and
whose own outputs are not in the group), the contribution of c to one output value y[n, o, l] is
x_c = sum_k W[o, c, k] * X[n, c, patch(l), k]; y = sum_c x_c + bias. Removing a set T of channels
changes y by exactly sum_{c in T} x_c, which both papers minimise. Samples are drawn at random
(image, output channel, location) triples; a group read by several consumers (a residual stream)
stacks the samples of all of them, so the selection minimises the total reconstruction error.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from edgeprune import modelrun
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.prune import blocks
from edgeprune.pipeline.prune.graph import Graph
from edgeprune.pipeline.prune.methods.base import Importance, Scores
from edgeprune.pipeline.prune.methods.l1 import L1Importance
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.space import PruningSpace, plan_changes

SAMPLES_PER_CONSUMER = 4096
CALIBRATION_IMAGES = 256


@dataclasses.dataclass
class Consumer:
    """A layer reading a group's channels: which of its input channels are which group units."""

    name: str
    module: nn.Linear | nn.Conv2d
    local: np.ndarray  # the consumer's input-channel index of each covered unit
    units: np.ndarray  # the group unit of each of those channels


@dataclasses.dataclass
class GroupSamples:
    contributions: np.ndarray  # (samples, group size): x_c per sampled output value
    consumers: list[Consumer]

    @property
    def target(self) -> np.ndarray:
        """The group's total contribution to each sampled output (what reconstruction must keep)."""
        return self.contributions.sum(1)


def _layer(model: nn.Module, name: str) -> nn.Linear | nn.Conv2d:
    """A layer these methods read or re-solve: only Linear and Conv2d layers are ever asked for."""
    return cast("nn.Linear | nn.Conv2d", model.get_submodule(name))


def consumers_of(
    model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor]
) -> dict[str, list[Consumer]]:
    """For every channel group, the Conv2d (ungrouped) / Linear layers that read its channels."""
    graph = Graph(model, example_inputs)
    out: dict[str, list[Consumer]] = {}
    for g in space.groups:
        if g.kind != "channels":
            continue
        touches = graph.coupled(g.id, range(g.size))
        producers = {t.name for t in touches if t.side == "out"}
        out[g.id] = [
            Consumer(t.name, _layer(model, t.name), np.array(t.idxs), np.array(t.roots))
            for t in touches
            if t.side == "in"
            and t.name not in producers
            and t.kind in ("linear", "conv")
            and isinstance(model.get_submodule(t.name), (nn.Linear, nn.Conv2d))
        ]
    return out


@torch.no_grad()
def sample_contributions(
    model: nn.Module,
    space: PruningSpace,
    example_inputs: Sequence[torch.Tensor],
    calibration: torch.Tensor,
    samples: int = SAMPLES_PER_CONSUMER,
    seed: int = 0,
) -> dict[str, GroupSamples]:
    """Contributions of every group's channels to randomly sampled outputs of its consumers."""
    consumers = consumers_of(model, space, example_inputs)
    wanted = {c.name for cs in consumers.values() for c in cs}
    inputs = _consumer_inputs(model, calibration, wanted)
    rng = np.random.default_rng(seed)
    out: dict[str, GroupSamples] = {}
    for g in space.groups:
        parts = []
        for c in consumers.get(g.id, []):
            x = _contributions(c.module, inputs[c.name], samples, rng)  # (samples, consumer in-channels)
            part = np.zeros((x.shape[0], g.size))
            part[:, c.units] = x[:, c.local]
            parts.append(part)
        if parts:
            out[g.id] = GroupSamples(np.concatenate(parts), consumers[g.id])
    return out


def _consumer_inputs(model: nn.Module, calibration: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
    captured: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, n=n: captured[n].append(args[0].detach()))
        for n, m in model.named_modules()
        if n in names
    ]
    try:
        for chunk in calibration.split(64):
            modelrun.run(model, (chunk,))
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in captured.items()}


def _contributions(layer: nn.Linear | nn.Conv2d, x: torch.Tensor, samples: int, rng: np.random.Generator) -> np.ndarray:
    """x_c for `samples` random (image, output channel, location) triples of `layer`'s output."""
    w = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])
        n = torch.from_numpy(rng.integers(0, rows.shape[0], samples))
        o = torch.from_numpy(rng.integers(0, w.shape[0], samples))
        return (w[o] * rows[n]).double().numpy()
    patches, _ = _patches(layer, x, samples, rng)  # (samples, C, kh*kw)
    o = torch.from_numpy(rng.integers(0, w.shape[0], samples))
    return (w[o].flatten(2) * patches).sum(-1).double().numpy()


def _patches(
    layer: nn.Conv2d, x: torch.Tensor, samples: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input patches (samples, C, kh*kw) of random output locations, and the image of each sample."""
    if isinstance(layer.padding, str):
        raise EdgepruneError(
            f"layer {layer} uses padding={layer.padding!r}; reconstruction "
            "methods need numeric padding: use --method l1"
        )
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    xp = nn.functional.pad(x, (pw, pw, ph, ph))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    n = torch.from_numpy(rng.integers(0, x.shape[0], samples))
    oy = torch.from_numpy(rng.integers(0, oh, samples)) * sh
    ox = torch.from_numpy(rng.integers(0, ow, samples)) * sw
    rows = (oy[:, None] + dh * torch.arange(kh)[None, :])[:, :, None].expand(samples, kh, kw)
    cols = (ox[:, None] + dw * torch.arange(kw)[None, :])[:, None, :].expand(samples, kh, kw)
    picked = xp[n[:, None, None], :, rows, cols]  # (samples, kh, kw, C)
    return picked.permute(0, 3, 1, 2).reshape(samples, x.shape[1], kh * kw), n


def kept_local(plan: Plan, gid: str, consumer: Consumer) -> tuple[np.ndarray, np.ndarray]:
    """(kept units, their input-channel index in the *pruned* consumer), for one consumer."""
    removed = set(plan.groups[gid].removed)
    removed_local = np.sort(consumer.local[[u in removed for u in consumer.units]])
    keep = np.array([u not in removed for u in consumer.units])
    local = consumer.local[keep]
    return consumer.units[keep], local - np.searchsorted(removed_local, local)


@torch.no_grad()
def rescale(pruned: nn.Module, plan: Plan, samples: dict[str, GroupSamples]) -> None:
    """ThiNet's last step: one least-squares weight per kept channel, so the kept channels' sum
    reconstructs the full group's contribution; applied to every consumer's weights."""
    for gid, gs in samples.items():
        keep = np.array(sorted(plan.groups[gid].keep))
        if len(keep) == plan.groups[gid].size:
            continue
        scale = least_squares(gs.contributions[:, keep], gs.target)
        factor = dict(zip(keep.tolist(), scale.tolist()))
        for c in gs.consumers:
            if blocks.inside(c.name, plan.removed_blocks):
                continue  # removed with its block: nothing left to rescale
            units, local = kept_local(plan, gid, c)
            layer = _layer(pruned, c.name)
            f = torch.tensor([factor[u] for u in units], dtype=layer.weight.dtype)
            shape = [1, -1] + [1] * (layer.weight.dim() - 2)
            layer.weight[:, torch.from_numpy(local)] *= f.view(shape)


def least_squares(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """argmin_w ||design @ w - target||^2 by the normal equations, with a tiny ridge for rank-deficient
    designs (dead channels): ~20x faster than an SVD-based solver at these sizes."""
    gram = design.T @ design
    ridge = 1e-8 * (np.trace(gram) / max(len(gram), 1) + 1e-12)
    return np.linalg.solve(gram + ridge * np.eye(len(gram)), design.T @ target)


def removed_channels(
    model: nn.Module, plan: Plan, example_inputs: Sequence[torch.Tensor]
) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """Per layer name, the input and the output channel indices `plan` removes (all groups together)."""
    cuts, heads = plan_changes(Graph(model, example_inputs), plan)
    ins: dict[str, set[int]] = {}
    outs: dict[str, set[int]] = {}
    for (name, side), (kind, _dim, idxs) in cuts.items():
        if kind != "param":
            (outs if side == "out" else ins).setdefault(name, set()).update(idxs)
    for site, removed in heads.items():
        for p in site.projections:
            outs.setdefault(p, set()).update(site.head_rows(removed))
        ins.setdefault(site.proj, set()).update(c for h in removed for c in site.head_cols(h))  # type: ignore[arg-type]
    return ins, outs


@torch.no_grad()
def refit(
    model: nn.Module,
    pruned: nn.Module,
    plan: Plan,
    example_inputs: Sequence[torch.Tensor],
    calibration: torch.Tensor,
    seed: int = 0,
) -> None:
    """He et al.'s second step: every layer that lost input channels has its weights re-solved by
    least squares on the inputs it kept, so that its outputs on calibration data match the unpruned
    layer's (for the outputs it kept itself)."""
    removed_in, removed_out = removed_channels(model, plan, example_inputs)
    layers = {
        n: m
        for n, m in model.named_modules()
        if n in removed_in
        and not blocks.inside(n, plan.removed_blocks)
        and (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1))
    }
    inputs = _consumer_inputs(model, calibration, set(layers))
    rng = np.random.default_rng(seed)
    for name, layer in sorted(layers.items()):
        x, w = inputs[name], layer.weight.detach()
        keep = torch.tensor([j for j in range(w.shape[1]) if j not in removed_in[name]])
        rows = torch.tensor([o for o in range(w.shape[0]) if o not in removed_out.get(name, set())])
        unknowns = len(keep) * (w[0, 0].numel() if w.dim() > 2 else 1)
        samples = int(min(20000, max(SAMPLES_PER_CONSUMER, 2 * unknowns)))
        if isinstance(layer, nn.Linear):
            flat = x.reshape(-1, x.shape[-1])
            design = flat[torch.from_numpy(rng.integers(0, flat.shape[0], samples))]
            target = design @ w[rows].T
            design = design[:, keep]
        else:
            patches, _ = _patches(layer, x, samples, rng)  # (samples, C, k)
            target = torch.einsum("sck,ock->so", patches, w[rows].flatten(2))
            design = patches[:, keep].reshape(samples, -1)
        solved = least_squares(design.double().numpy(), target.double().numpy())
        new = torch.from_numpy(solved.T).to(w.dtype).reshape(len(rows), len(keep), *w.shape[2:])
        _layer(pruned, name).weight.copy_(new)


class NextLayerImportance(Importance):
    """A method that judges a group's channels by the layers reading them (ThiNet, LASSO): shared
    calibration sampling, and L1 filter norms for the rare group no Conv2d/Linear reads."""

    needs_data = True

    def __init__(self, calibration_images: int = CALIBRATION_IMAGES, samples: int = SAMPLES_PER_CONSUMER) -> None:
        self.calibration_images = calibration_images
        self.samples = samples

    def sample(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any
    ) -> dict[str, GroupSamples]:
        return sample_contributions(
            model, space, example_inputs, data.calibration(self.calibration_images), self.samples
        )

    def scores(
        self, model: nn.Module, space: PruningSpace, example_inputs: Sequence[torch.Tensor], data: Any = None
    ) -> Scores:
        samples = self.sample(model, space, example_inputs, data)
        fallback = L1Importance().scores(model, space, example_inputs)
        return {g.id: self.rank(samples[g.id]) if g.id in samples else fallback[g.id] for g in space.groups}

    @abc.abstractmethod
    def rank(self, samples: GroupSamples) -> np.ndarray:
        """One score per unit of the group from its sampled contributions (higher = keep)."""
