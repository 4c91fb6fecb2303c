"""DenseNet-121 (Huang et al. 2017, DenseNet-BC) in the CIFAR form of kuangliu/pytorch-cifar:
growth rate 32, a 3x3 stem of 2*growth channels, dense blocks of 6-12-24-16 bottleneck layers
(BN-ReLU-1x1 conv to 4*growth, BN-ReLU-3x3 conv to growth, concatenated to the input with
torch.cat), transitions with compression 0.5 (BN-ReLU-1x1 conv, 2x2 average pool), a final
BN-ReLU, global average pooling and one linear classifier.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from convslim.models import init_weights, register, scaled


def bn_relu_conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=False),
                         nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(*bn_relu_conv(cin, 4 * growth, 1), *bn_relu_conv(4 * growth, growth, 3))

    def forward(self, x):
        return torch.cat([self.body(x), x], 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(*bn_relu_conv(cin, cout, 1), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    def __init__(self, blocks: list[int], growth: int = 32, reduction: float = 0.5,
                 num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        growth = scaled(growth, width)
        cin = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(cin, growth))
                cin += growth
            if i < len(blocks) - 1:
                cout = max(1, int(cin * reduction))
                layers.append(Transition(cin, cout))
                cin = cout
        layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=False)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register("densenet121")
def densenet121(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """CIFAR DenseNet-121 (growth 32*width)."""
    return DenseNet([6, 12, 24, 16], 32, 0.5, num_classes, in_channels, width)
