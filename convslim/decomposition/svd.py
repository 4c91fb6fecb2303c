"""Truncated SVD (seed 000 eq. 4, fig. 3): W (O x I*k*k) ~ U_r S_r V_r^T.

A linear layer becomes two thinner linear layers (I -> r -> O); a conv becomes a kxk conv with r
outputs followed by a 1x1 conv to O (complexity O(d^2 r I) + O(O r) instead of O(d^2 I O)).
sqrt(S) goes to each factor so both have the same scale.
"""
import torch
from torch import nn

from .rank import energy_rank


def values(layer):
    return torch.linalg.svdvals(layer.weight.detach().to(torch.float64).reshape(layer.weight.shape[0], -1))


def ranks_for(layer, energy):
    return [energy_rank(values(layer), energy)]


def structure(layer, ranks):
    """The two-layer replacement with rank r (weights not set)."""
    r = int(ranks[0])
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return [nn.Linear(layer.in_features, r, bias=False), nn.Linear(r, layer.out_features, bias=bias)]
    first = nn.Conv2d(layer.in_channels, r, layer.kernel_size, layer.stride, layer.padding,
                      dilation=layer.dilation, bias=False)
    return [first, nn.Conv2d(r, layer.out_channels, 1, bias=bias)]


@torch.no_grad()
def factorize(layer, ranks):
    """The replacement with weights from the rank-r truncated SVD of the layer's weight."""
    first, second = structure(layer, ranks)
    r = first.weight.shape[0]
    w = layer.weight.detach().to(torch.float64)
    u, s, vh = torch.linalg.svd(w.reshape(w.shape[0], -1), full_matrices=False)
    root = s[:r].sqrt()
    first.weight.copy_((root[:, None] * vh[:r]).reshape(first.weight.shape))
    second.weight.copy_((u[:, :r] * root).reshape(second.weight.shape))
    if layer.bias is not None:
        second.bias.copy_(layer.bias)
    return [first, second]
