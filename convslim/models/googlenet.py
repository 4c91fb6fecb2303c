"""GoogLeNet (Szegedy et al. 2015, Inception v1) in the CIFAR form of kuangliu/pytorch-cifar:
a 3x3 stem of 192 channels, inception modules 3a-5b with the paper's channel table, each branch
conv followed by BatchNorm and ReLU, the 5x5 branch as two 3x3 convs, branches joined with
torch.cat, two stride-2 max-pools, global average pooling and one linear classifier.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from convslim.models import conv_bn_relu, init_weights, register, scaled

# name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj); "M" = 3x3 stride-2 max-pool
_TABLE = [
    (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M",
    (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), "M",
    (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128),
]


class Inception(nn.Module):
    def __init__(self, cin: int, n1: int, n3r: int, n3: int, n5r: int, n5: int, pool_proj: int):
        super().__init__()
        self.b1 = conv_bn_relu(cin, n1, 1)
        self.b2 = nn.Sequential(*conv_bn_relu(cin, n3r, 1), *conv_bn_relu(n3r, n3, 3))
        self.b3 = nn.Sequential(*conv_bn_relu(cin, n5r, 1), *conv_bn_relu(n5r, n5, 3), *conv_bn_relu(n5, n5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *conv_bn_relu(cin, pool_proj, 1))
        self.out_channels = n1 + n3 + n5 + pool_proj

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        cin = scaled(192, width)
        self.stem = conv_bn_relu(in_channels, cin, 3)
        layers = []
        for row in _TABLE:
            if row == "M":
                layers.append(nn.MaxPool2d(3, 2, 1))
            else:
                layers.append(Inception(cin, *(scaled(c, width) for c in row)))
                cin = layers[-1].out_channels
        self.inceptions = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.inceptions(self.stem(x)))))


@register("googlenet")
def googlenet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """CIFAR GoogLeNet (Inception v1) with BatchNorm."""
    return GoogLeNet(num_classes, in_channels, width)
