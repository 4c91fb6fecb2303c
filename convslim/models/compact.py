"""Compact networks for 32x32 inputs (seed 000 section 4.4, seed 002 section 1.4, seed 003 section
2.2.5, seed 004 section 3): MobileNetV1, ShuffleNetV1 and V2, SqueezeNet, GhostNet and an
Xception-style separable net.

CIFAR adaptations follow kuangliu/pytorch-cifar: stride-1 stems and fewer early downsamplings so
32x32 inputs end at 4x4 (or 2x2). Every net keeps the zoo's contract (global average pooling,
then one ``nn.Linear`` named ``classifier``). The blocks (`SeparableConv`, `GhostModule`) are
also what `convslim.convert` uses to convert the layers of any model.

Channel shuffle (a 5-d view and transpose) and ShuffleNetV1's grouped 1x1 convs are beyond
torch-pruning's DependencyGraph (its maintainers say so: VainF/Torch-Pruning#45), so the two
ShuffleNets are compact baselines to train, not models for the channel pruner; every other net
here traces and prunes.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from convslim.models import conv_bn_relu, init_weights, register, scaled


def divisible(v: float, divisor: int) -> int:
    """Round to the nearest multiple of divisor (at least one divisor): group convs need it."""
    return max(divisor, int(round(v / divisor)) * divisor)


class SeparableConv(nn.Module):
    """Depthwise kxk (carries stride) -> BatchNorm -> pointwise 1x1: the Xception/MobileNet split.

    No nonlinearity between the two (Chollet 2017 found it trains better without). Params
    C_in*k^2 + 2*C_in + C_in*C_out, against C_in*C_out*k^2 for a standard conv.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int | None = None,
                 dilation: int = 1, bias: bool = False):
        super().__init__()
        pad = kernel // 2 * dilation if padding is None else padding
        self.depthwise = nn.Conv2d(cin, cin, kernel, stride, pad, dilation=dilation, groups=cin, bias=False)
        self.bn = nn.BatchNorm2d(cin)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=bias)

    def forward(self, x):
        return self.pointwise(self.bn(self.depthwise(x)))


class GhostModule(nn.Module):
    """Ghost module (Han et al. 2020): a primary conv makes ceil(C_out/ratio) intrinsic maps, a
    cheap depthwise conv derives the other "ghost" maps from them; outputs concatenated.

    With ``relu=False`` it is a drop-in replacement for a plain conv followed by its own BN.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, ratio: int = 2, dw: int = 3,
                 relu: bool = True, padding: int | None = None, dilation: int = 1):
        super().__init__()
        if ratio < 2:
            raise ValueError(f"ghost ratio must be at least 2, got {ratio}")
        self.cout = cout
        m = math.ceil(cout / ratio)
        pad = kernel // 2 * dilation if padding is None else padding
        act = [nn.ReLU(inplace=False)] if relu else []
        self.primary = nn.Sequential(nn.Conv2d(cin, m, kernel, stride, pad, dilation=dilation, bias=False),
                                     nn.BatchNorm2d(m), *act)
        self.cheap = nn.Sequential(nn.Conv2d(m, m * (ratio - 1), dw, 1, dw // 2, groups=m, bias=False),
                                   nn.BatchNorm2d(m * (ratio - 1)), *act)
        self.trim = m * ratio != cout

    def forward(self, x):
        y = self.primary(x)
        out = torch.cat([y, self.cheap(y)], 1)
        return out[:, :self.cout] if self.trim else out


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: view as (g, C/g), transpose to (C/g, g), flatten."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        b, c, h, w = x.shape
        if self.groups == 1:
            return x
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class Classifier(nn.Module):
    """Shared head: features -> global average pool -> flatten -> linear `classifier` (last)."""

    def __init__(self, features: nn.Module, channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


# --- MobileNetV1 (Howard et al. 2017) ------------------------------------------------------------

_MOBILENET_V1 = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024]


def dw_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """MobileNet's block: depthwise 3x3-BN-ReLU, pointwise 1x1-BN-ReLU (seed 004 fig. 7)."""
    return nn.Sequential(*conv_bn_relu(cin, cin, 3, stride, groups=cin), *conv_bn_relu(cin, cout, 1))


@register("mobilenetv1")
def mobilenetv1(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """MobileNetV1 for CIFAR: stride-1 3x3 stem of 32, 13 depthwise-separable blocks (32 -> 2)."""
    cin = scaled(32, width)
    layers = [conv_bn_relu(in_channels, cin, 3)]
    for item in _MOBILENET_V1:
        cout, stride = item if isinstance(item, tuple) else (item, 1)
        cout = scaled(cout, width)
        layers.append(dw_separable(cin, cout, stride))
        cin = cout
    return Classifier(nn.Sequential(*layers), cin, num_classes)


# --- ShuffleNetV1 (Zhang et al. 2018) ------------------------------------------------------------

class ShuffleUnit(nn.Module):
    """1x1 group conv -> shuffle -> 3x3 depthwise -> 1x1 group conv; add (stride 1) or concat
    with a 3x3 average-pooled shortcut (stride 2)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid = cout // 4
        g1 = 1 if cin < 4 * groups or cin % groups else groups   # the first unit sees the thin stem
        branch_out = cout - cin if stride == 2 else cout
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU(inplace=False)
        self.shuffle = ChannelShuffle(g1)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_out)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x):
        out = self.shuffle(self.relu1(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        res = self.shortcut(x)
        return self.relu2(torch.cat([out, res], 1) if self.stride == 2 else out + res)


@register("shufflenetv1")
def shufflenetv1(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, groups: int = 2) -> nn.Module:
    """ShuffleNetV1 g=2 for CIFAR: stages of 200-400-800 channels, 4-8-4 units (32 -> 4)."""
    stem = divisible(24 * width, groups)
    layers = [conv_bn_relu(in_channels, stem, 3)]
    cin = stem
    for cout, blocks in zip((200, 400, 800), (4, 8, 4)):
        cout = max(divisible(cout * width, 4 * groups), cin + 4 * groups)
        for i in range(blocks):
            layers.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1, groups))
            cin = cout
    return Classifier(nn.Sequential(*layers), cin, num_classes)


# --- ShuffleNetV2 (Ma et al. 2018) ---------------------------------------------------------------

class ShuffleV2Unit(nn.Module):
    """Split channels in half, transform one half (1x1, 3x3 depthwise, 1x1), concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2   # channels are even (divisible(..., 2))
        self.branch = nn.Sequential(*conv_bn_relu(half, half, 1),
                                    nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False), nn.BatchNorm2d(half),
                                    *conv_bn_relu(half, half, 1))
        self.shuffle = ChannelShuffle(2)

    def forward(self, x):
        keep, work = x.chunk(2, dim=1)
        return self.shuffle(torch.cat([keep, self.branch(work)], 1))


class ShuffleV2Down(nn.Module):
    """Downsampling unit: both branches see the whole input, each gives half the outputs."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        half = cout // 2
        self.left = nn.Sequential(nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                                  *conv_bn_relu(cin, cout - half, 1))
        self.right = nn.Sequential(*conv_bn_relu(cin, half, 1),
                                   nn.Conv2d(half, half, 3, 2, 1, groups=half, bias=False), nn.BatchNorm2d(half),
                                   *conv_bn_relu(half, half, 1))
        self.shuffle = ChannelShuffle(2)

    def forward(self, x):
        return self.shuffle(torch.cat([self.left(x), self.right(x)], 1))


@register("shufflenetv2")
def shufflenetv2(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """ShuffleNetV2 1.0x for CIFAR: stem 24, stages 116-232-464 (3-7-3 units), 1x1 to 1024."""
    cin = scaled(24, width)
    layers = [conv_bn_relu(in_channels, cin, 3)]
    for cout, blocks in zip((116, 232, 464), (3, 7, 3)):
        cout = divisible(cout * width, 2)
        layers.append(ShuffleV2Down(cin, cout))
        layers += [ShuffleV2Unit(cout) for _ in range(blocks)]
        cin = cout
    last = scaled(1024, width)
    layers.append(conv_bn_relu(cin, last, 1))
    return Classifier(nn.Sequential(*layers), last, num_classes)


# --- SqueezeNet (Iandola et al. 2016) ------------------------------------------------------------

class Fire(nn.Module):
    """Squeeze 1x1 to few channels, then expand with parallel 1x1 and 3x3 convs, concatenated."""

    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = conv_bn_relu(cin, squeeze, 1)
        self.expand1 = conv_bn_relu(squeeze, expand, 1)
        self.expand3 = conv_bn_relu(squeeze, expand, 3)
        self.out_channels = 2 * expand

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([self.expand1(s), self.expand3(s)], 1)


_SQUEEZE = [(16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192), (48, 192), (64, 256), (64, 256)]


@register("squeezenet")
def squeezenet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """SqueezeNet 1.1 layout for CIFAR: 3x3 stem of 64, eight Fire modules, two max-pools (32 -> 8);
    the final 1x1 conv classifier is replaced by the zoo's linear one."""
    cin = scaled(64, width)
    layers = [conv_bn_relu(in_channels, cin, 3)]
    for item in _SQUEEZE:
        if item == "M":
            layers.append(nn.MaxPool2d(3, 2, 1))
            continue
        fire = Fire(cin, scaled(item[0], width), scaled(item[1], width))
        layers.append(fire)
        cin = fire.out_channels
    return Classifier(nn.Sequential(*layers), cin, num_classes, dropout=0.5)


# --- GhostNet (Han et al. 2020) ------------------------------------------------------------------

class SqueezeExcite(nn.Module):
    """Channel attention: pool, 1x1 reduce, ReLU, 1x1 expand, hard sigmoid, scale the input."""

    def __init__(self, channels: int, ratio: float = 0.25):
        super().__init__()
        mid = divisible(channels * ratio, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.relu = nn.ReLU(inplace=False)
        self.expand = nn.Conv2d(mid, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class GhostBottleneck(nn.Module):
    """G-bneck: Ghost (expand, ReLU), [depthwise stride 2], [SE], Ghost (project, linear), + shortcut."""

    def __init__(self, cin: int, mid: int, cout: int, kernel: int, stride: int, se: bool):
        super().__init__()
        layers = [GhostModule(cin, mid, relu=True)]
        if stride > 1:
            layers += [nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False), nn.BatchNorm2d(mid)]
        if se:
            layers.append(SqueezeExcite(mid))
        layers.append(GhostModule(mid, cout, relu=False))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cin, kernel, stride, kernel // 2, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


# kernel, expansion, out, SE, stride: the paper's table, first two stride-2 stages at stride 1 for 32x32
_GHOST = [(3, 16, 16, 0, 1), (3, 48, 24, 0, 1), (3, 72, 24, 0, 1), (5, 72, 40, 1, 2), (5, 120, 40, 1, 1),
          (3, 240, 80, 0, 2), (3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 1, 1),
          (3, 672, 112, 1, 1), (5, 672, 160, 1, 2), (5, 960, 160, 0, 1), (5, 960, 160, 1, 1),
          (5, 960, 160, 0, 1), (5, 960, 160, 1, 1)]


@register("ghostnet")
def ghostnet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """GhostNet 1.0x for CIFAR: G-bnecks of the paper's table (32 -> 4), 1x1 to 960, 1280 head."""
    cin = divisible(16 * width, 4)
    layers = [conv_bn_relu(in_channels, cin, 3)]
    for k, exp, c, se, s in _GHOST:
        cout = divisible(c * width, 4)
        layers.append(GhostBottleneck(cin, divisible(exp * width, 4), cout, k, s, bool(se)))
        cin = cout
    last = divisible(960 * width, 4)
    head = scaled(1280, width)
    layers += [conv_bn_relu(cin, last, 1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(last, head, 1), nn.ReLU(inplace=False)]
    return Classifier(nn.Sequential(*layers), head, num_classes, dropout=0.2)


# --- Xception-style separable network (Chollet 2017) ---------------------------------------------

def sep_bn_relu(cin: int, cout: int) -> list:
    return [SeparableConv(cin, cout, 3), nn.BatchNorm2d(cout), nn.ReLU(inplace=False)]


class XceptionBlock(nn.Module):
    """`reps` separable convs (BN, ReLU after each); stride 2 by max-pool with a 1x1 stride-2
    projection shortcut, else an identity shortcut."""

    def __init__(self, cin: int, cout: int, reps: int, stride: int):
        super().__init__()
        layers, c = [], cin
        for _ in range(reps):
            layers += sep_bn_relu(c, cout)
            c = cout
        if stride > 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


@register("xception")
def xception(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """Xception-style net for CIFAR: 3x3 stems 32-64, entry blocks 128-256-512 (stride 2 each,
    32 -> 4), four middle blocks of three 512 separable convs, exit separable conv to 1024."""
    c = [scaled(v, width) for v in (32, 64, 128, 256, 512, 1024)]
    layers = [conv_bn_relu(in_channels, c[0], 3), conv_bn_relu(c[0], c[1], 3)]
    layers += [XceptionBlock(c[1], c[2], 2, 2), XceptionBlock(c[2], c[3], 2, 2), XceptionBlock(c[3], c[4], 2, 2)]
    layers += [XceptionBlock(c[4], c[4], 3, 1) for _ in range(4)]
    layers += sep_bn_relu(c[4], c[5])
    return Classifier(nn.Sequential(*layers), c[5], num_classes)
