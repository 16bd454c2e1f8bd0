"""The model registry: every bundled architecture builds, runs, matches its paper, and exports."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgeprune import models
from edgeprune.errors import EdgepruneError


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", models.available())
def test_forward_shape(name: str) -> None:
    model = models.create(name, num_classes=10).eval()
    shape = models.default_input_shape(name)
    with torch.no_grad():
        if models.takes_tokens(name):  # a language model: logits for every position, flattened
            assert model(torch.randint(0, 10, shape)).shape == (shape[0] * shape[1], 10)
        else:
            assert model(torch.randn(shape)).shape == (1, 10)


def test_default_input_shapes() -> None:
    assert models.default_input_shape("resnet20") == (1, 3, 32, 32)
    assert models.default_input_shape("mobilenetv2") == (1, 3, 32, 32)
    assert models.default_input_shape("resnet50") == (1, 3, 224, 224)


def test_expected_names_registered() -> None:
    cifar = {"resnet20", "resnet56", "resnet110", "mobilenetv2", "vgg16", "vgg16_bn", "vit_tiny"}
    assert cifar | {"resnet18", "resnet50"} <= set(models.available())


@pytest.mark.parametrize("call", [models.create, models.default_input_shape])
def test_unknown_name_is_a_user_error(call) -> None:
    with pytest.raises(EdgepruneError) as info:
        call("resnet21")
    message = str(info.value)
    assert "resnet21" in message and "resnet20" in message
    assert "\n" not in message


def test_register_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        models.register("resnet20")(lambda num_classes=10: nn.Identity())


def paper_depth(model: nn.Module) -> tuple[int, int]:
    """(main-path convs, fcs): the weighted layers He et al. count; projection shortcuts excluded."""
    convs = sum(isinstance(m, nn.Conv2d) and ".shortcut." not in f".{name}." for name, m in model.named_modules())
    fcs = sum(isinstance(m, nn.Linear) for m in model.modules())
    return convs, fcs


@pytest.mark.parametrize(
    ("name", "n", "paper_params"),
    [("resnet20", 3, 0.27e6), ("resnet56", 9, 0.85e6), ("resnet110", 18, 1.7e6)],
)
def test_cifar_resnet_matches_paper(name: str, n: int, paper_params: float) -> None:
    model = models.create(name, num_classes=10)
    convs, fcs = paper_depth(model)
    assert (convs, fcs) == (6 * n + 1, 1)  # 19/55/109 convs + fc = 20/56/110 weighted layers
    projections = [
        m for name, m in model.named_modules() if name.endswith("shortcut") and not isinstance(m, nn.Identity)
    ]
    assert len(projections) == 2  # option B: one 1x1 projection where each of stages 2 and 3 begins
    assert abs(n_params(model) - paper_params) / paper_params < 0.10


def test_mobilenetv2_width_mult() -> None:
    thin = models.create("mobilenetv2", width_mult=0.5)
    assert n_params(thin) < 0.6 * n_params(models.create("mobilenetv2"))
    assert thin(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@torch.no_grad()
def test_vit_attention_survives_head_removal() -> None:
    """Slicing head 1 out of qkv and proj (as a head pruner does) gives exactly the original
    attention without that head's contribution: the forward derives the head size from the weights."""
    attn = models.create("vit_tiny").blocks[0].attn
    dim, d, x = 192, 64, torch.randn(1, 65, 192)
    rows = [s * dim + h * d + j for s in range(3) for h in (0, 2) for j in range(d)]
    cols = [h * d + j for h in (0, 2) for j in range(d)]
    pruned = copy.deepcopy(attn)
    pruned.qkv = nn.Linear(dim, len(rows))
    pruned.qkv.weight.copy_(attn.qkv.weight[rows])
    pruned.qkv.bias.copy_(attn.qkv.bias[rows])
    pruned.proj = nn.Linear(len(cols), dim)
    pruned.proj.weight.copy_(attn.proj.weight[:, cols])
    pruned.proj.bias.copy_(attn.proj.bias)
    pruned.num_heads = 2
    attn.proj.weight[:, d : 2 * d] = 0  # silence head 1 in the original
    torch.testing.assert_close(pruned(x), attn(x))


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vgg16", "vit_tiny"])
def test_onnx_export(name: str, tmp_path) -> None:
    model = models.create(name, num_classes=10).eval()
    x = torch.randn(models.default_input_shape(name))
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17)
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-3)
