"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 as in kuangliu/pytorch-cifar: the stem conv
and the second stage use stride 1 instead of 2, so the net downsamples 32 -> 4. Inverted residual
blocks (1x1 expand, 3x3 depthwise, 1x1 linear projection; identity added when the shape is kept),
a 1x1 conv to 1280, global average pooling and one linear classifier. Channel counts are
multiplied by width and rounded to a multiple of 8 (the paper's _make_divisible).
"""
from __future__ import annotations

import torch.nn as nn

from convslim.models import conv_bn_relu, init_weights, register

# expansion t, output channels c, repeats n, first stride s
_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of divisor, at least divisor, never more than 10% below v."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else list(conv_bn_relu(cin, hidden, 1))
        layers += [*conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        cin = make_divisible(32 * width)
        layers: list[nn.Module] = [conv_bn_relu(in_channels, cin, 3, 1)]
        for t, c, n, s in _CFG:
            cout = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = make_divisible(1280 * width)
        layers.append(conv_bn_relu(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register("mobilenetv2")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """CIFAR MobileNetV2 (stride-1 stem and second stage)."""
    return MobileNetV2(num_classes, in_channels, width)
