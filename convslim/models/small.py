"""Small models for the 8x8 single-channel scikit-learn digits data (no paper; sized so that
they train to over 90 % accuracy in a few seconds on CPU). Both end in global average pooling,
so they also run on 32x32 inputs.

- ``digitsnet``: a plain stack of three conv-BN-ReLU layers (16-32-64, the last with stride 2).
- ``digits_resnet``: a 3x3 stem and three basic residual blocks (16, 32 stride 2 with a 1x1
  projection shortcut, 32), as in the CIFAR ResNets.
"""
from __future__ import annotations

import torch.nn as nn

from convslim.models import conv_bn_relu, init_weights, register, scaled
from convslim.models.resnet_cifar import BasicBlock


class SmallNet(nn.Module):
    """Stem conv-BN-ReLU, a body, global average pool and a linear classifier."""

    def __init__(self, body: nn.Module, stem: nn.Module, out_channels: int, num_classes: int):
        super().__init__()
        self.stem = stem
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(out_channels, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.body(self.stem(x)))))


@register("digitsnet")
def digitsnet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """Three conv-BN-ReLU layers (16-32-64), global average pool, linear."""
    c = [scaled(w, width) for w in (16, 32, 64)]
    body = nn.Sequential(*conv_bn_relu(c[0], c[1], 3), *conv_bn_relu(c[1], c[2], 3, stride=2))
    return SmallNet(body, conv_bn_relu(in_channels, c[0], 3), c[2], num_classes)


@register("digits_resnet")
def digits_resnet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """Tiny ResNet: stem and three basic blocks (16, 32/2 with projection, 32)."""
    c = [scaled(w, width) for w in (16, 32)]
    body = nn.Sequential(BasicBlock(c[0], c[0], 1), BasicBlock(c[0], c[1], 2), BasicBlock(c[1], c[1], 1))
    return SmallNet(body, conv_bn_relu(in_channels, c[0], 3), c[1], num_classes)
