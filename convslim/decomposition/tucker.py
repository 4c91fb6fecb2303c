"""Tucker-2 of a conv kernel (seed 000 eq. 2; Kim et al. 2016): K (O, I, k, k) ~ C x0 U_out x1 U_in.

Only the two channel modes are decomposed (partial Tucker by tensorly's HOOI), so the conv
becomes 1x1 (I -> r_in), the kxk core (r_in -> r_out, carrying stride, padding and dilation) and
1x1 (r_out -> O, carrying the bias). Ranks come from the energy of each mode's unfolding.
"""
import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import partial_tucker
from torch import nn

from .rank import energy_rank, unfolding_values


def ranks_for(layer, energy):
    w = layer.weight
    return [energy_rank(unfolding_values(w, 0), energy), energy_rank(unfolding_values(w, 1), energy)]


def structure(layer, ranks):
    r_out, r_in = (int(r) for r in ranks)
    return [nn.Conv2d(layer.in_channels, r_in, 1, bias=False),
            nn.Conv2d(r_in, r_out, layer.kernel_size, layer.stride, layer.padding, dilation=layer.dilation,
                      bias=False),
            nn.Conv2d(r_out, layer.out_channels, 1, bias=layer.bias is not None)]


def decompose_kernel(weight, ranks, *, n_iter_max=200, seed=0):
    """(core, U_out, U_in) as float64 numpy arrays, by tensorly's partial Tucker (HOOI, SVD init)."""
    with tl.backend_context("numpy"):
        w = np.asarray(weight.detach().to(torch.float64).cpu().numpy())
        (core, (u_out, u_in)), _ = partial_tucker(w, rank=[int(r) for r in ranks], modes=[0, 1], init="svd",
                                                  n_iter_max=n_iter_max, tol=1e-10, random_state=seed)
    return core, u_out, u_in


@torch.no_grad()
def factorize(layer, ranks):
    first, core_conv, last = structure(layer, ranks)
    core, u_out, u_in = decompose_kernel(layer.weight, ranks)
    first.weight.copy_(torch.from_numpy(u_in.T.copy()).reshape(first.weight.shape))
    core_conv.weight.copy_(torch.from_numpy(core))
    last.weight.copy_(torch.from_numpy(u_out.copy()).reshape(last.weight.shape))
    if layer.bias is not None:
        last.bias.copy_(layer.bias)
    return [first, core_conv, last]
