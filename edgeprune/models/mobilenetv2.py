"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 CIFAR inputs.

Inverted residual blocks: 1x1 expansion (x6) -> 3x3 depthwise -> 1x1 linear projection, ReLU6
after the first two, and a residual add when stride is 1 and the width is unchanged.

The CIFAR adaptation is the common one (kuangliu/pytorch-cifar, chenyaofo/pytorch-cifar-models):
the stem conv and the first stride-2 stage (24 channels) run at stride 1, so a 32x32 image is
downsampled 8x to a 4x4 map before pooling; the ImageNet strides (32x) would shrink it to 1x1,
leaving the 3x3 depthwise convs of the last stages looking mostly at padding. The remaining
strides, widths and depths follow the paper's Table 2.
"""

from __future__ import annotations

from torch import Tensor, nn

from edgeprune.models.registry import CIFAR_INPUT, register
from edgeprune.models.resnet import init_weights

# (expansion t, output channels c, repeats n, stride s) per stage; paper Table 2 except the
# second stage's stride (2 -> 1 for CIFAR).
CIFAR_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor` without losing more than 10%, as the reference
    implementation does: channel counts in multiples of 8 map well onto SIMD lanes."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def conv_bn_relu6(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand -> depthwise -> linear projection; no ReLU after the projection (the "linear
    bottleneck"), because a ReLU in the narrow space destroys information."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu6(in_ch, hidden, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs. `width_mult` scales every width; as in the paper the last
    1x1 conv keeps 1280 channels when `width_mult` < 1."""

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0) -> None:
        super().__init__()
        ch = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        blocks: list[nn.Module] = [conv_bn_relu6(3, ch, 3, stride=1)]
        for t, c, n, s in CIFAR_STAGES:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(ch, out_ch, s if i == 0 else 1, t))
                ch = out_ch
        blocks.append(conv_bn_relu6(ch, last, 1))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self, classifier_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register("mobilenetv2", CIFAR_INPUT)
def mobilenetv2(num_classes: int = 10, width_mult: float = 1.0) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult)
