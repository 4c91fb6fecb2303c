"""AlexNet (Krizhevsky et al. 2012) scaled down for 32x32 inputs, as in common CIFAR code:
five 3x3 convs (64-192-384-256-256) each with BatchNorm and ReLU, three 2x2 max-pools, global
average pooling, and a small classifier (dropout, Linear 256->512, ReLU, dropout, Linear).
"""
from __future__ import annotations

import torch.nn as nn

from convslim.models import conv_bn_relu, init_weights, register, scaled


class AlexNetCifar(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        layers, cin = [], in_channels
        for v in (64, "M", 192, "M", 384, 256, 256, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.extend(conv_bn_relu(cin, scaled(v, width), 3))
                cin = scaled(v, width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        hidden = scaled(512, width)
        self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(cin, hidden), nn.ReLU(inplace=False), nn.Dropout(0.5))
        self.classifier = nn.Linear(hidden, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.fc(self.flatten(self.pool(self.features(x)))))


@register("alexnet")
def alexnet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """CIFAR AlexNet: 5 conv-BN-ReLU, small MLP classifier."""
    return AlexNetCifar(num_classes, in_channels, width)
