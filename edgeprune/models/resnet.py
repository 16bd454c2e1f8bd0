"""ImageNet-layout ResNet-18 and ResNet-50 (He et al. 2016), plus the residual blocks shared with
the CIFAR ResNets in `resnet_cifar`.

Shortcuts are identity when the shape is unchanged and a 1x1 conv + BN projection otherwise
(the paper's option B): every channel coupling a residual add creates is then a real layer that a
structured pruner can shrink, which the zero-padding shortcut (option A) is not. Bottleneck blocks
stride in the 3x3 conv (the "v1.5" placement torchvision also uses), which is more accurate than
striding the first 1x1 conv and costs the same to prune.
"""

from __future__ import annotations

from torch import Tensor, nn

from edgeprune.models.registry import IMAGENET_INPUT, register


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Conv (no bias: the BN that follows makes it redundant) + BN."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
    ]


def shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a 1x1 conv + BN projection (option B)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(in_ch, out_ch, 1, stride))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual add; used by ResNet-18 and the CIFAR ResNets."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_ch, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, width, 3)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut(in_ch, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4) with a residual add; used by ResNet-50."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_ch, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, out_ch, 1)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


Block = type[BasicBlock] | type[Bottleneck]


def make_stage(block: Block, in_ch: int, width: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    """`blocks` blocks, the first one striding; returns the stage and its output channel count."""
    layers = []
    for i in range(blocks):
        layers.append(block(in_ch, width, stride if i == 0 else 1))
        in_ch = width * block.expansion
    return nn.Sequential(*layers), in_ch


def init_weights(model: nn.Module, classifier_std: float | None = None) -> None:
    """Kaiming-normal convs (He et al. 2015, matched to ReLU), BN as identity; with `classifier_std`,
    Linear layers drawn from N(0, std) with zero bias (VGG's and MobileNet's reference init)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and classifier_std is not None:
            nn.init.normal_(m.weight, 0, classifier_std)
            nn.init.zeros_(m.bias)


class ResNet(nn.Module):
    """7x7/2 stem + max-pool, four stages of 64/128/256/512 widths, global average pool, fc."""

    def __init__(self, block: Block, blocks: tuple[int, int, int, int], num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_bn(3, 64, 7, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)
        )
        ch = 64
        stages = []
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stage, ch = make_stage(block, ch, width, n, stride=1 if i == 0 else 2)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


@register("resnet18", IMAGENET_INPUT)
def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


@register("resnet50", IMAGENET_INPUT)
def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)
