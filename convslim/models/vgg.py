"""VGG-11/13/16/19 (Simonyan & Zisserman 2015) with BatchNorm, CIFAR variant as in Liu et al. 2017
"Network Slimming" and kuangliu/pytorch-cifar: the 3x3 conv stacks with 5 max-pools, then global
average pooling and one Linear(512*width, num_classes). Five 2x2 pools need inputs of 32x32.
"""
from __future__ import annotations

import torch.nn as nn

from convslim.models import conv_bn_relu, init_weights, register, scaled

_CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def make_layers(cfg: list, in_channels: int, width: float) -> tuple[nn.Sequential, int]:
    layers, cin = [], in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            cout = scaled(v, width)
            layers.extend(conv_bn_relu(cin, cout, 3))
            cin = cout
    return nn.Sequential(*layers), cin


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        self.features, cout = make_layers(cfg, in_channels, width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(cout, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


def _factory(name: str):
    def build(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        return VGG(_CFGS[name], num_classes, in_channels, width)
    build.__name__ = name
    build.__doc__ = f"{name} with BatchNorm, CIFAR variant (one linear classifier)."
    return register(name)(build)


for _name in _CFGS:
    _factory(_name)
