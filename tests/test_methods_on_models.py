"""Every method on every registry model it applies to: scores, a plan, physical removal, reconstruction.

Small inputs and few calibration samples keep this fast; what is checked is that each method runs
on each real architecture and leaves a smaller model with the same output shape.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.models import create
from edgeprune.pipeline.data import load_data
from edgeprune.pipeline.methods import Goal, get_method
from edgeprune.pipeline.prune.apply import apply
from edgeprune.pipeline.prune.blocks import find_blocks
from edgeprune.pipeline.prune.select import plan_at_level
from edgeprune.pipeline.prune.space import discover

MODELS = {
    "resnet20": 32,
    "resnet56": 32,
    "mobilenetv2": 32,
    "vgg16": 32,
    "vit_tiny": 32,
    "resnet18": 64,
    "resnet50": 64,
}
FAST = {
    "thinet": {"calibration_images": 8, "samples": 256},
    "lasso": {"calibration_images": 8, "samples": 256},
    "slimming": {"steps": 1},
    "l1": {},
    "pfs": {"steps": 1},
    "tas": {"steps": 1},
    "anp": {"steps": 1, "pgd_steps": 1},
    "sanp": {"steps": 1, "calibration": 8},
}
#: methods that learn channel gates, masks or widths; attention heads are not channels to them
CHANNELS_ONLY = {"pfs", "tas", "anp", "sanp"}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[int, object]:
    out = {}
    for size in set(MODELS.values()):
        rng = np.random.default_rng(size)
        path = tmp_path_factory.mktemp(f"d{size}") / "d.npz"
        x = rng.integers(0, 255, (16, size, size, 3), dtype=np.uint8)
        np.savez(path, x_train=x, y_train=np.arange(16) % 10, x_test=x[:4], y_test=np.arange(4))
        out[size] = load_data(str(path), batch_size=8)
    return out


#: ResNet-50's 2048-wide groups make the calibration methods take minutes: covered by ResNet-18's
#: identical block structure (Bottleneck aside) in the unit suite
CASES = [
    (a, m)
    for a in sorted(MODELS)
    for m in sorted(FAST)
    if not (a == "resnet50" and m in ("thinet", "lasso", "pfs", "tas", "anp", "sanp"))
]


@pytest.mark.parametrize(("arch", "method"), CASES)
def test_method_prunes_registry_model(arch: str, method: str, datasets) -> None:
    torch.manual_seed(0)
    size = MODELS[arch]
    model = create(arch, num_classes=10).eval()
    x = (torch.randn(1, 3, size, size),)
    data = datasets[size]
    m = get_method(method, **FAST[method])
    space = discover(model, x)
    if method == "slimming" and arch == "vit_tiny":
        with pytest.raises(EdgepruneError, match="no BatchNorm"):
            m.prepare(copy.deepcopy(model), space, x, data)
        return
    goal = Goal(cost_fraction=0.5, depth="on")
    if method in CHANNELS_ONLY and arch == "vit_tiny":
        with pytest.raises(EdgepruneError, match="attention-head group"):
            m.prepare(copy.deepcopy(model), space, x, data, goal)
        return
    prepared = m.prepare(copy.deepcopy(model), space, x, data, goal).eval()
    found = find_blocks(prepared, x)
    blocks = m.block_scores(prepared, found, data) if found else {}
    plan = plan_at_level(
        space,
        m.scores(prepared, space, x, data),
        0.5,
        16,
        ranking=m.ranking,
        depth="on",
        block_scores=blocks,
        blocks_by_threshold=m.blocks_on_unit_scale,
    )
    pruned = apply(copy.deepcopy(prepared), plan, x)
    m.reconstruct(prepared, pruned, space, plan, x, data)
    assert pruned(*x).shape == (1, 10)
    assert torch.isfinite(pruned(*x)).all()
    assert sum(p.numel() for p in pruned.parameters()) < 0.8 * sum(p.numel() for p in model.parameters())
