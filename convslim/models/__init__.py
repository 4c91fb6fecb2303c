"""Model zoo: a registry of CIFAR-style CNNs (and tiny nets for 8x8 digits).

    from convslim.models import available, create
    model = create("resnet56", num_classes=10, in_channels=3, width=1.0)

Every factory takes ``num_classes``, ``in_channels`` and ``width`` (a multiplier applied to every
channel count), ends in global average pooling and one ``nn.Linear`` named ``classifier`` that is
the last module of the network, and uses only plain modules, ``+`` and ``torch.cat`` so that
torch-pruning's DependencyGraph can trace it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch.nn as nn

from convslim.errors import ConvslimError

__all__ = ["register", "available", "create", "scaled", "init_weights"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: register ``f(num_classes=10, in_channels=3, width=1.0) -> nn.Module`` as ``name``."""
    def deco(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"model name registered twice: {name!r}")
        _REGISTRY[name] = factory
        return factory
    return deco


def available() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def _check_count(what: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConvslimError(f"{what} must be an integer >= 1, got {value!r}")


def create(name: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """Build a registered model; bad names or arguments raise ConvslimError (one clear line)."""
    if name not in _REGISTRY:
        raise ConvslimError(f"unknown model {name!r}; known models: {', '.join(available())}")
    _check_count("num_classes", num_classes)
    _check_count("in_channels", in_channels)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ConvslimError(f"width must be a positive finite number, got {width!r}")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, width=float(width))


def scaled(channels: int, width: float) -> int:
    """Channel count ``channels`` multiplied by ``width``, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def init_weights(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_out, relu) convs with zero bias; BatchNorm weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=False),
    )


# Import the families last so that they register themselves.
from convslim.models import (  # noqa: E402,F401
    alexnet,
    densenet,
    googlenet,
    mobilenetv2,
    resnet,
    resnet_cifar,
    small,
    vgg,
)
from convslim.models import compact  # noqa: E402,F401  (mobilenetv1, shufflenetv1/v2, squeezenet, ghostnet, xception)
