"""ImageNet ResNet-18/34/50 of He et al. 2016 with the CIFAR stem used by common CIFAR code
(e.g. kuangliu/pytorch-cifar): a 3x3 stride-1 first conv and no max-pool, then four stages of
64-128-256-512 channels (strides 1-2-2-2) of basic (18/34) or bottleneck (50) blocks.
"""
from __future__ import annotations

import torch.nn as nn

from convslim.models import init_weights, register, scaled
from convslim.models.resnet_cifar import BasicBlock, make_stage


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand x4, plus the shortcut, then ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu3 = nn.ReLU(inplace=False)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, block, blocks: list[int], num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        c = [scaled(w, width) for w in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c[0])
        self.relu = nn.ReLU(inplace=False)
        cin = c[0]
        self.layer1, cin = make_stage(block, cin, c[0], blocks[0], 1)
        self.layer2, cin = make_stage(block, cin, c[1], blocks[1], 2)
        self.layer3, cin = make_stage(block, cin, c[2], blocks[2], 2)
        self.layer4, cin = make_stage(block, cin, c[3], blocks[3], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.classifier(self.flatten(self.pool(x)))


_CONFIGS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def _factory(name: str):
    block, blocks = _CONFIGS[name]

    def build(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        return ResNet(block, blocks, num_classes, in_channels, width)
    build.__name__ = name
    build.__doc__ = f"{name} with CIFAR stem (3x3 stride-1 conv, no max-pool)."
    return register(name)(build)


for _name in _CONFIGS:
    _factory(_name)
