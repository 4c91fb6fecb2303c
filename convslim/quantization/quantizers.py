"""Linear quantizers (seed 003, equations 2-2 to 2-5): scale, zero point, rounding, clamping.

One formula for both schemes, as ONNX Runtime computes it, so the simulation and the real int8
model agree: the range is first widened to contain 0 (so 0 is exact, which zero padding and ReLU
need), made symmetric [-absmax, absmax] for the symmetric scheme, then

    S = (r_max - r_min) / (q_max - q_min)         Z = round(q_min - r_min / S)   (0 when symmetric)
    q = clamp(round(r / S) + Z, q_min, q_max)     r' = S * (q - Z)

Rounding is half to even (torch.round, and ONNX Runtime's QuantizeLinear), not half away from
zero. The signed symmetric range is narrow, [-(2^(b-1) - 1), 2^(b-1) - 1], so S = absmax / q_max
exactly; with `reduce_range` (CPUs without VNNI, where int8 products could saturate the 16-bit
intermediate sums) weights use ONNX Runtime's reduced range [-2^(b-2), 2^(b-2)].
"""
from dataclasses import asdict, dataclass

import torch

from ..errors import ConvslimError

MIN_BITS, MAX_BITS = 2, 8
SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("tensor", "channel")


def check_bits(bits, what="bits"):
    """Bits for the linear quantizers; 1 bit is the binary method, more than 8 saves nothing here."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConvslimError(f"{what} must be an integer from {MIN_BITS} to {MAX_BITS} "
                            f"(use --method binary or ternary below 2 bits), got {bits}")
    return bits


def qrange(bits, *, symmetric, reduce_range=False):
    """(q_min, q_max): signed narrow range when symmetric, unsigned [0, 2^b - 1] otherwise."""
    check_bits(bits)
    if symmetric:
        if reduce_range:
            return -(2 ** (bits - 2)), 2 ** (bits - 2)
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    if reduce_range:
        return 0, 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def scale_zero_point(lo, hi, qmin, qmax, *, symmetric):
    """Scale and zero point for ranges [lo, hi] (scalars or per-channel vectors), seed eq. 2-2."""
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    if bool((lo > hi).any()):
        raise ConvslimError("quantization range has its minimum above its maximum")
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    if symmetric:
        absmax = torch.maximum(-lo, hi)
        lo, hi = -absmax, absmax
    scale = ((hi.double() - lo.double()) / (qmax - qmin)).float()
    degenerate = scale <= torch.finfo(torch.float32).tiny      # an all-zero tensor: any scale works
    scale = torch.where(degenerate, torch.ones_like(scale), scale)
    if symmetric:
        zp = torch.full_like(scale, float(round((qmin + qmax) / 2)))
    else:
        zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
    return scale, torch.where(degenerate, torch.zeros_like(zp), zp)


def quantize(x, scale, zero_point, qmin, qmax):
    """Integer codes q = clamp(round(x / S) + Z, q_min, q_max), seed eq. 2-3 / 2-5."""
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


def dequantize(q, scale, zero_point):
    return (q - zero_point) * scale


class _RoundSTE(torch.autograd.Function):
    """round() whose gradient is passed straight through (its true gradient is 0 almost everywhere)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def fake_quantize(x, scale, zero_point, qmin, qmax):
    """Quantize then dequantize, differentiable: gradient 1 inside the range, 0 where clamped."""
    q = torch.clamp(_RoundSTE.apply(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def channel_view(t, ndim, axis=0):
    """Reshape a per-channel vector so it broadcasts along `axis` of an `ndim`-d tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: bits, scheme, granularity (per tensor or per output channel)."""
    bits: int = 8
    symmetric: bool = True
    per_channel: bool = False
    reduce_range: bool = False

    def __post_init__(self):
        check_bits(self.bits)

    @property
    def qrange(self):
        return qrange(self.bits, symmetric=self.symmetric, reduce_range=self.reduce_range)

    def minmax(self, x):
        """Non-saturating range of a tensor: whole tensor, or each slice along dim 0."""
        if self.per_channel and x.ndim > 1:
            flat = x.detach().reshape(x.shape[0], -1)
            return flat.min(1).values, flat.max(1).values
        return x.detach().min(), x.detach().max()

    def params(self, lo, hi):
        qmin, qmax = self.qrange
        return scale_zero_point(lo, hi, qmin, qmax, symmetric=self.symmetric)

    def broadcast(self, t, x):
        return channel_view(t, x.ndim) if t.ndim == 1 and x.ndim > 1 else t

    def fake(self, x, lo=None, hi=None):
        """Fake-quantize `x` with the given range (default: its own min/max), gradients by STE."""
        if lo is None:
            lo, hi = self.minmax(x)
        scale, zp = self.params(lo, hi)
        scale, zp = self.broadcast(scale.to(x.device), x), self.broadcast(zp.to(x.device), x)
        return fake_quantize(x, scale, zp, *self.qrange)

    def codes(self, x):
        """Integer codes shifted to start at 0, and the dequantized value of every code per channel.

        codebook[c, k] = S_c * (k + q_min - Z_c); `codebook[c, codes]` equals `fake(x)` for channel c.
        """
        lo, hi = self.minmax(x)
        scale, zp = self.params(lo, hi)
        qmin, qmax = self.qrange
        q = quantize(x.detach(), self.broadcast(scale, x), self.broadcast(zp, x), qmin, qmax)
        levels = torch.arange(qmin, qmax + 1, dtype=torch.float32, device=scale.device)
        codebook = (levels[None, :] - zp.reshape(-1, 1)) * scale.reshape(-1, 1)
        return (q - qmin).to(torch.int64), codebook

    def describe(self):
        return asdict(self)


def weight_spec(bits, *, scheme="symmetric", granularity="channel", reduce_range=False):
    """The spec for weights, checking the names a user typed."""
    if scheme not in SCHEMES:
        raise ConvslimError(f"unknown scheme {scheme!r}; choose {' or '.join(SCHEMES)}")
    if granularity not in GRANULARITIES:
        raise ConvslimError(f"unknown granularity {granularity!r}; choose {' or '.join(GRANULARITIES)}")
    return QuantSpec(bits, scheme == "symmetric", granularity == "channel", reduce_range)
