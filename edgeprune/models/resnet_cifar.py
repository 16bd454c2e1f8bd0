"""CIFAR ResNet-20/56/110 (He et al. 2016, section 4.2): a 3x3 stem conv with 16 channels, three
stages of n BasicBlocks at 16/32/64 channels (n = 3/9/18), global average pool and fc; 6n + 2
weighted layers.

Shortcuts use **option B** (a 1x1 conv + BN projection where the shape changes, identity
elsewhere), not the paper's option A for CIFAR (stride-2 subsampling with zero-padded extra
channels). Option A ties the new channels of a stage to a constant zero pad, a coupling no layer
owns, so a structured pruner cannot physically remove those channels consistently across the
residual add. Option B makes every coupling a real layer that shrinks with its stage; it adds
only two projections (~2.7k parameters, about 1% of ResNet-20).
"""

from __future__ import annotations

from torch import Tensor, nn

from edgeprune.models.registry import CIFAR_INPUT, register
from edgeprune.models.resnet import BasicBlock, init_weights, make_stage


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs."""

    def __init__(self, n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1, ch = make_stage(BasicBlock, 16, 16, n, stride=1)
        self.layer2, ch = make_stage(BasicBlock, ch, 32, n, stride=2)
        self.layer3, ch = make_stage(BasicBlock, ch, 64, n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


@register("resnet20", CIFAR_INPUT)
def resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(3, num_classes)


@register("resnet56", CIFAR_INPUT)
def resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(9, num_classes)


@register("resnet110", CIFAR_INPUT)
def resnet110(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(18, num_classes)
