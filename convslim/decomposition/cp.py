"""CP decomposition of a conv kernel (seed 000 eq. 3; Lebedev et al. 2015):
K (O, I, kh, kw) ~ sum_r lambda_r a_r (x) b_r (x) c_r (x) d_r, by tensorly's ALS (parafac).

The conv becomes 1x1 (I -> R), depthwise kh x 1, depthwise 1 x kw (stride, padding and
dilation split between them) and 1x1 (R -> O, carrying lambda and the bias):
R * (I + kh + kw + O) weights instead of O * I * kh * kw.

CP has no singular values of its own; the energy rule gives it the larger of the two Tucker-2
channel ranks (a rank-R CP kernel has both unfoldings of rank <= R).
"""
import warnings

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import parafac
from torch import nn

from . import tucker


def ranks_for(layer, energy):
    return [max(tucker.ranks_for(layer, energy))]


def structure(layer, ranks):
    r = int(ranks[0])
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    return [nn.Conv2d(layer.in_channels, r, 1, bias=False),
            nn.Conv2d(r, r, (kh, 1), (sh, 1), (ph, 0), dilation=(dh, 1), groups=r, bias=False),
            nn.Conv2d(r, r, (1, kw), (1, sw), (0, pw), dilation=(1, dw), groups=r, bias=False),
            nn.Conv2d(r, layer.out_channels, 1, bias=layer.bias is not None)]


def decompose_kernel(weight, rank, *, n_iter_max=300, tol=1e-9, seed=0):
    """(lambda, [A_out, B_in, C_h, D_w]) as float64 numpy arrays, by tensorly's CP-ALS (stops when
    the relative reconstruction error changes by less than `tol`)."""
    with tl.backend_context("numpy"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Trying to compute SVD", UserWarning)   # rank above a mode's size
        w = np.asarray(weight.detach().to(torch.float64).cpu().numpy())
        cp = parafac(w, rank=int(rank), init="svd", n_iter_max=n_iter_max, tol=tol, random_state=seed,
                     normalize_factors=True)
    return cp.weights, cp.factors


@torch.no_grad()
def factorize(layer, ranks):
    first, vertical, horizontal, last = structure(layer, ranks)
    lam, (a, b, c, d) = decompose_kernel(layer.weight, ranks[0])
    t = lambda arr: torch.from_numpy(np.ascontiguousarray(arr))  # noqa: E731
    first.weight.copy_(t(b.T).reshape(first.weight.shape))
    vertical.weight.copy_(t(c.T).reshape(vertical.weight.shape))
    horizontal.weight.copy_(t(d.T).reshape(horizontal.weight.shape))
    last.weight.copy_(t(a * lam).reshape(last.weight.shape))
    if layer.bias is not None:
        last.bias.copy_(layer.bias)
    return [first, vertical, horizontal, last]
