"""VGG-16 with BatchNorm, CIFAR variant: the structured-pruning benchmark network.

Which variant: the 13 conv layers of VGG-16 (cfg 64,64,M,128,128,M,256x3,M,512x3,M,512x3,M), each
followed by BN and ReLU, then a single Linear(512, num_classes) on the 1x1x512 map. This is the
network of Network Slimming (Liu et al. 2017) as released with the paper, except that the last
pool here is the cfg's max-pool where that code average-pools the 2x2 map; both give 512
features. Li et al. 2017 ("Pruning Filters for Efficient ConvNets") use the same conv stack but a
two-layer head, Linear(512, 512) + BN + ReLU + Linear(512, 10), so their parameter and FLOP
counts differ from ours by that extra layer (~0.26M parameters).
"""

from __future__ import annotations

from torch import Tensor, nn

from edgeprune.models.registry import CIFAR_INPUT, register
from edgeprune.models.resnet import init_weights

VGG16_CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGG(nn.Module):
    """Conv-BN-ReLU stack from `cfg` ("M" = 2x2 max-pool), flattened into one linear classifier."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(v, int)
                conv = nn.Conv2d(in_ch, v, 3, padding=1, bias=False)  # bias is redundant before BN
                layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch, num_classes)
        init_weights(self, classifier_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@register("vgg16", CIFAR_INPUT)
@register("vgg16_bn", CIFAR_INPUT)
def vgg16(num_classes: int = 10) -> VGG:
    return VGG(VGG16_CFG, num_classes)
