"""Binary and ternary weights (seed 003 eq. 2-6 to 2-8), trained with straight-through gradients.

- Binary (BWN): W ~ alpha_c * sign(W_c) per output channel c, with sign(0) = +1 and
  alpha_c = mean |W_c|, the scale that minimises ||W_c - alpha_c * sign(W_c)||^2 (XNOR-Net).
  Stochastic binarisation (eq. 2-7) draws +1 with probability sigmoid(w / tau_c) while
  training, tau_c fixed at a quarter of the channel's initial mean |w|: a typical weight flips
  about 2 % of the time, one near zero is a fair coin, and since tau does not follow the weights
  (as BinaryConnect's fixed clip range) training can make a weight certain by growing it.
  Evaluation and storage always use the deterministic sign, and BatchNorm statistics are
  re-estimated with it after stochastic training.
- XNOR: inputs binarised too, +1 where x > 0 and -1 elsewhere (so a post-ReLU map keeps its
  on/off pattern), and the output rescaled by XNOR-Net's K: the mean |x| over channels,
  averaged over each receptive field.
- Ternary (TWN): W ~ alpha_c * t, t in {-1, 0, +1}, |w| > delta -> sign(w). delta and alpha are
  the exact minimisers of ||W_c - alpha_c * t||^2: keeping the k largest |w| gives the error
  sum(w^2) - (sum of those k |w|)^2 / k, so k maximises (top-k sum)^2 / k, alpha is their mean
  and delta lies between the k-th and (k+1)-th largest |w| (TWN's 0.7 * mean|w| approximates it).

The float weights stay as latent weights; the forward pass sees the quantized ones and the
gradient flows to the latent weights unchanged (straight-through estimator).
"""
import torch
import torch.nn.functional as F
from torch import nn


def _per_channel_abs(w):
    return w.detach().abs().reshape(w.shape[0], -1)


def _bcast(v, w):
    return v.reshape(-1, *([1] * (w.ndim - 1)))


def _ste(w, q):
    """Forward q, backward identity to the latent weight w."""
    return w + (q - w).detach()


def binary_weights(w, *, tau=None, generator=None):
    """alpha_c * sign(W_c) per output channel; sign(0) = +1 (seed eq. 2-6); stochastic given tau."""
    alpha = _per_channel_abs(w).mean(1).clamp_min(1e-12)
    if tau is not None:
        p = torch.sigmoid(w.detach() / _bcast(tau, w))
        sign = torch.where(torch.rand(w.shape, generator=generator, device=w.device) < p, 1.0, -1.0)
    else:
        sign = torch.where(w.detach() >= 0, 1.0, -1.0)
    return _bcast(alpha, w) * sign.to(w.dtype), alpha


def ternary_params(w):
    """Per output channel: (delta, alpha) minimising ||W_c - alpha_c * t_c||^2 exactly."""
    a = _per_channel_abs(w)
    s, _ = a.sort(1, descending=True)
    k = torch.arange(1, s.shape[1] + 1, dtype=s.dtype, device=s.device)
    csum = s.cumsum(1)
    best = (csum ** 2 / k).argmax(1)                          # k - 1 of the best k
    rows = torch.arange(len(s), device=s.device)
    alpha = csum[rows, best] / (best + 1).to(s.dtype)
    below = torch.where(best + 1 < s.shape[1], s[rows, (best + 1).clamp(max=s.shape[1] - 1)], torch.zeros_like(alpha))
    delta = (s[rows, best] + below) / 2
    return delta, alpha


def ternary_weights(w):
    delta, alpha = ternary_params(w)
    t = torch.where(w.detach() > _bcast(delta, w), 1.0, torch.where(w.detach() < -_bcast(delta, w), -1.0, 0.0))
    return _bcast(alpha, w) * t.to(w.dtype), t, alpha


class BinaryWeight(nn.Module):
    """Weight parametrization: alpha * sign(W) per output channel, straight-through gradients."""

    def __init__(self, stochastic=False, weight=None):
        super().__init__()
        self.stochastic = stochastic
        if stochastic:
            if weight is None:
                raise ValueError("stochastic binarisation needs the initial weight for its temperature")
            self.register_buffer("tau", (_per_channel_abs(weight).mean(1) / 4).clamp_min(1e-12))

    def forward(self, w):
        q, _ = binary_weights(w, tau=self.tau if self.stochastic and self.training else None)
        return _ste(w, q)

    @torch.no_grad()
    def encode(self, w):
        _, alpha = binary_weights(w)
        codes = (w >= 0).to(torch.int64)
        return codes, torch.stack([-alpha, alpha], 1).float()


class TernaryWeight(nn.Module):
    """Weight parametrization: alpha * {-1, 0, +1} with TWN's optimal threshold, per output channel."""

    def forward(self, w):
        q, _, _ = ternary_weights(w)
        return _ste(w, q)

    @torch.no_grad()
    def encode(self, w):
        _, t, alpha = ternary_weights(w)
        return (t + 1).to(torch.int64), torch.stack([-alpha, torch.zeros_like(alpha), alpha], 1).float()


class _SignSTE(torch.autograd.Function):
    """+1 where x > 0, -1 elsewhere; gradient passed where |x| <= 1 (hard tanh), as BNN/XNOR-Net."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x > 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def _xnor_pre(module, args):
    x = args[0]
    module._xnor_scale = x.detach().abs().mean(1, keepdim=True)   # A: mean |x| over channels (or features)
    return (_SignSTE.apply(x),) + tuple(args[1:])


def _xnor_post(module, args, out):
    a = module.__dict__.pop("_xnor_scale")
    if isinstance(module, nn.Conv2d):
        k = F.avg_pool2d(a, module.kernel_size, module.stride, module.padding, count_include_pad=True)
    else:
        k = a
    bias = module.bias
    if bias is None:
        return out * k
    b = bias.reshape(1, -1, *([1] * (out.ndim - 2)))
    return (out - b) * k + b


_xnor_pre.convslim_quant = _xnor_post.convslim_quant = True   # `strip` removes marked hooks


def binarize_inputs(layers):
    """XNOR-Net: binary inputs to every layer of `layers`, output rescaled by K. A layer whose
    inputs are binarised already (a decoded XNOR model quantized again) is left as it is."""
    for _, mod in layers:
        if isinstance(mod, nn.Conv2d) and mod.dilation != (1, 1):
            continue
        if any(h is _xnor_pre for h in mod._forward_pre_hooks.values()):
            continue
        mod.register_forward_pre_hook(_xnor_pre)
        mod.register_forward_hook(_xnor_post)
