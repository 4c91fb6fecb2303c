"""CIFAR ResNets of He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2.

6n+2 layers (n basic blocks per stage), stages of 16-32-64 channels on 32x32 inputs. Where the
shape changes the shortcut is a 1x1 conv + BatchNorm projection (option B), not the zero-padding
identity (option A), so that torch-pruning can trace and prune it.
"""
from __future__ import annotations

import torch.nn as nn

from convslim.models import init_weights, register, scaled


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, plus the shortcut (identity or 1x1 conv-BN), then ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def make_stage(block, cin: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    """``blocks`` residual blocks, the first with ``stride``; returns the stage and its out channels."""
    layers = []
    for s in [stride] + [1] * (blocks - 1):
        layers.append(block(cin, planes, s))
        cin = planes * block.expansion
    return nn.Sequential(*layers), cin


class ResNetCifar(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        c = [scaled(w, width) for w in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c[0])
        self.relu = nn.ReLU(inplace=False)
        self.layer1, cin = make_stage(BasicBlock, c[0], c[0], n, 1)
        self.layer2, cin = make_stage(BasicBlock, cin, c[1], n, 2)
        self.layer3, cin = make_stage(BasicBlock, cin, c[2], n, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.classifier(self.flatten(self.pool(x)))


def _factory(depth: int):
    def build(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        return ResNetCifar(depth, num_classes, in_channels, width)
    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016), option-B projection shortcuts."
    return register(f"resnet{depth}")(build)


for _depth in (20, 32, 44, 56, 110):
    _factory(_depth)
