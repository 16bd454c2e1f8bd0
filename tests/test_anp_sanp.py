"""PGD, ANP and SANP do their jobs: the attack is real and stays in its budget, ANP's masks zero
channels under adversarial training and those channels come out physically, SANP decides channels
image by image and its cost term lowers what it keeps."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.counting import count
from edgeprune.pipeline.learned import gating
from edgeprune.pipeline.methods import Goal, get_method
from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.select import plan_at_level
from edgeprune.pipeline.prune.space import discover
from edgeprune.pipeline.recovery import TrainConfig, top1, train
from edgeprune.pipeline.recovery.pgd import PGD, adversarial_loss, robust_top1
from tests.synthetic import learnable_npz
from tests.test_cli import run_cli
from tests.test_learned import IMAGE, IMAGE32, Planted
from tests.tiny_models import tiny_resnet


@pytest.fixture(scope="module")
def linear(data16) -> nn.Module:
    """A linear classifier trained (clean) on the colour task: accurate, and easy to attack. Briefly,
    at a small rate: trained to saturation its cross-entropy is exactly 0 in float32, the gradient
    vanishes and PGD has nothing to follow (gradient masking)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    train(model, data16.train, TrainConfig(steps=20, lr=0.002), log=lambda s: None)
    return model.eval()


# ---------------------------------------------------------------------------------------------- PGD


def test_pgd_stays_within_eps_in_pixels_and_in_the_pixel_range(linear, data16) -> None:
    pgd = PGD.for_data(data16, steps=5)
    x, y = next(iter(data16.val))
    adv = pgd.attack(linear, x, y)
    clean, attacked = pgd.pixels(x), pgd.pixels(adv)
    assert (attacked - clean).abs().max() <= pgd.eps + 1e-5
    assert (attacked - clean).abs().max() > 0.9 * pgd.eps  # and it uses its budget (sign steps reach the ball's edge)
    assert attacked.min() >= -1e-5 and attacked.max() <= 1 + 1e-5


def test_pgd_lowers_the_accuracy_of_a_trained_model(linear, data16) -> None:
    clean = top1(linear, data16.val)
    assert clean > 0.9
    # the classes differ by a +150/255 colour shift, more than 8/255 can undo; 0.1 can
    assert robust_top1(linear, data16.val, PGD.for_data(data16, eps=0.1, step=0.03, steps=10)) < clean - 0.3
    x, y = next(iter(data16.val))
    adv = PGD.for_data(data16).attack(linear, x, y)  # 8/255 cannot flip it but does raise the loss
    with torch.no_grad():
        assert nn.functional.cross_entropy(linear(adv), y) > 5 * nn.functional.cross_entropy(linear(x), y)
    # no budget, no effect: the robust accuracy is the clean one
    assert robust_top1(linear, data16.val, PGD.for_data(data16, eps=0.0, steps=2)) == clean


def test_adversarial_training_raises_robust_accuracy(linear, data16) -> None:
    """Madry et al.'s loss (the ANP training's and `--recover adversarial`'s) does what it is for."""
    pgd = PGD.for_data(data16, eps=0.1, step=0.03, steps=5)
    torch.manual_seed(0)
    robust_model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    train(robust_model, data16.train, TrainConfig(steps=20, lr=0.002), adversarial_loss(pgd), log=lambda s: None)
    assert robust_top1(robust_model, data16.val, pgd) > robust_top1(linear, data16.val, pgd) + 0.3


# ---------------------------------------------------------------------------------------------- ANP


def test_folding_channel_factors_into_weights_equals_applying_them_at_the_hooks() -> None:
    model = tiny_resnet().eval()
    space = discover(model, IMAGE32)
    points = gating.hook_points(model, space, IMAGE32)
    g = torch.Generator().manual_seed(0)
    values = {
        grp.id: torch.rand(grp.size, generator=g) * (torch.rand(grp.size, generator=g) > 0.3) for grp in space.groups
    }
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), gating.channel_hooks(model, points, lambda p, out: out * p.along(values[p.group], out)):
        hooked = model(x)
    gating.fold(model, points, values)
    with torch.no_grad():
        assert torch.allclose(model(x), hooked, atol=1e-5)


def test_folding_into_a_batchnorm_without_affine_parameters_says_why() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, affine=False))
    point = gating.HookPoint("g", "1", torch.arange(8), 1)
    with pytest.raises(EdgepruneError, match="BatchNorm without affine parameters"):
        gating.fold(model, [point], {"g": torch.ones(8)})


def _anp(data16, kl_weight: float) -> tuple[nn.Module, object, object]:
    torch.manual_seed(0)
    model = Planted()
    space = discover(model.eval(), IMAGE)
    method = get_method("anp", steps=40, pgd_steps=2, mask_lr=0.2, lr=0.05, kl_weight=kl_weight)
    method.prepare(model, space, IMAGE, data16)
    return model, space, method


def test_anp_masks_zero_channels_under_adversarial_training(data16) -> None:
    _, _, method = _anp(data16, kl_weight=1.0)
    keep = np.asarray(method.state()["keep"]["conv"])
    assert keep[0] > 0.5, keep  # the channel that decides the class stays
    assert (keep == 0).sum() >= 4, keep  # most of the noise channels went to exactly zero
    assert method.state()["zeroed_total"] == int((keep == 0).sum())
    # the control: without the KL pressure toward the sparse prior, fewer masks reach zero
    _, _, control = _anp(data16, kl_weight=0.0)
    assert control.state()["zeroed_total"] < method.state()["zeroed_total"]


def test_anp_zeroed_channels_are_removed_physically_without_changing_outputs(data16) -> None:
    model, space, method = _anp(data16, kl_weight=1.0)
    scores = method.scores(model, space, IMAGE)
    zeroed = method.state()["zeroed_total"]
    plan = plan_at_level(space, scores, zeroed / 8, round_to=1, ranking="global")
    assert len(plan.groups["conv"].keep) == 8 - zeroed
    pruned = apply(copy.deepcopy(model), plan, IMAGE)
    assert pruned.conv.out_channels == 8 - zeroed
    x, _ = next(iter(data16.val))
    with torch.no_grad():  # the masks were folded into the weights: removing the zeroed channels is exact
        assert torch.allclose(pruned(x), model.eval()(x), atol=1e-5)


def _compress_tiny(tmp_path: Path, method: str, *options: str) -> tuple[dict, float]:
    """`compress` of the tiny ResNet with `method` to 60% of its FLOPs, a few steps of everything:
    the report and the unpruned FLOPs."""
    npz = learnable_npz(tmp_path / "d.npz", n_train=32, n_test=16, size=32, classes=10)
    base = count(tiny_resnet(), IMAGE32).flops
    torch.save(tiny_resnet(), tmp_path / "m.pt")
    out = tmp_path / "out"
    rc, _, err = run_cli(
        [
            tmp_path / "m.pt",
            "--input-shape",
            "1x3x32x32",
            "--method",
            method,
            "--data",
            npz,
            "--budget",
            f"{0.6 * base / 1e6:.3f}MFLOPs",
            "--search-steps",
            "2",
            "--steps",
            "1",
            *options,
            "--batch-size",
            "16",
            "--round-to",
            "4",
            "--warmup",
            "1",
            "--repeats",
            "3",
            "--out",
            out,
        ]
    )
    assert rc == 0, err
    assert (out / "model.onnx").exists()
    return json.loads((out / "report.json").read_text()), base


def test_anp_compress_end_to_end_recovers_adversarially(tmp_path: Path) -> None:
    rep, base = _compress_tiny(tmp_path, "anp", "--pgd-steps", "1")
    assert rep["recovery"]["method"] == "adversarial"  # ANP's default: the pruned model is recovered for robustness
    learned = rep["method"]["learned"]
    assert learned["attack"] == {"eps": 8 / 255, "step": 2 / 255, "steps": 1}
    assert set(learned["keep"]) == {g.id for g in discover(tiny_resnet(), IMAGE32).groups}  # a mask for every group
    assert rep["final"]["flops"] <= 0.6 * base


# --------------------------------------------------------------------------------------------- SANP


def _sanp(data32, cost_weight: float):
    torch.manual_seed(0)
    model = tiny_resnet().eval()
    space = discover(model, IMAGE32)
    method = get_method("sanp", steps=12, spm_lr=0.05, cost_weight=cost_weight, calibration=64)
    method.prepare(model, space, IMAGE32, data32, Goal(cost_fraction=0.3))
    return model, space, method


@pytest.fixture(scope="module")
def sanp_pair(data32):
    return _sanp(data32, 0.0), _sanp(data32, 4.0)


def test_sanp_decisions_vary_from_image_to_image(sanp_pair, data32) -> None:
    _, _, method = sanp_pair[1]
    dyn = method.dynamic
    dyn.net.eval()
    with torch.no_grad():
        dyn(data32.calibration(32))
    varying = {gid: int(((d.mean(0) > 0) & (d.mean(0) < 1)).sum()) for gid, d in dyn.decisions.items()}
    assert sum(varying.values()) > 0, varying  # some channel is on for some images and off for others
    per_image = torch.cat(list(dyn.decisions.values()), 1).sum(1)
    assert per_image.max() > per_image.min()  # so images differ in how many channels they use


def test_sanp_cost_term_lowers_the_kept_channels_and_the_measured_compute(sanp_pair) -> None:
    (_, _, free), (_, _, costed) = sanp_pair

    def mean_keep(m) -> float:
        return float(np.mean(np.concatenate([np.asarray(v) for v in m.state()["keep_frequency"].values()])))

    assert mean_keep(costed) < mean_keep(free) - 0.08, (mean_keep(costed), mean_keep(free))
    saved = {m: m.state()["dynamic"]["macs_saved_mean"] for m in (free, costed)}
    assert saved[costed] > saved[free] + 0.1, saved
    # and the measured per-image compute closed on the target (0.3 of the unpruned MACs); without the
    # cost term the random network still sheds channels (fewer logits to get wrong), but less
    assert costed.state()["dynamic"]["macs_fraction_mean"] < 0.35
    assert free.state()["exported"] == costed.state()["exported"] == "static"


def test_sanp_static_scores_rank_frequently_kept_channels_first(sanp_pair) -> None:
    model, space, method = sanp_pair[1]
    scores = method.scores(model, space, IMAGE32)
    for gid, freq in method.state()["keep_frequency"].items():
        order = np.argsort(-scores[gid], kind="stable")
        assert np.all(np.diff(np.asarray(freq)[order]) <= 0), gid  # a less often kept channel never ranks higher


def test_sanp_compress_exports_a_static_model(tmp_path: Path) -> None:
    rep, base = _compress_tiny(tmp_path, "sanp")
    learned = rep["method"]["learned"]
    assert learned["exported"] == "static" and "static graphs" in learned["why"]
    assert 0 < learned["dynamic"]["macs_fraction_mean"] <= 1 + learned["dynamic"]["spm_macs_fraction"]
    assert rep["final"]["flops"] <= 0.6 * base
