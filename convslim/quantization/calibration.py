"""Activation ranges from calibration data: min-max (non-saturating) or a saturating threshold.

Seed 003 (figure 2-4): non-saturating quantization maps the extreme values to the edges of the
integer range and wastes levels on rare outliers; saturating quantization picks a threshold,
clips beyond it and spends the levels where the values are. Activations here are quantized
asymmetrically (uint8 over [lo, hi]), so the histogram (2048 bins, as TensorRT) is of x - min:
for a post-ReLU tensor that is TensorRT's histogram of |x|, and for a signed one (the input image,
a residual sum) it does not fold the two sides onto each other.

- `percentile`: lo and hi at the (100 - p)-th and p-th percentiles (default p = 99.99).
- `kl`: TensorRT's entropy calibration of the upper end. For each candidate i (from 128 bins up
  to 2048) the reference P is the first i bins with the clipped outliers added to the last one;
  Q is P merged into 2^bits equal chunks and spread back over each chunk's non-empty bins;
  hi = min + i * bin width for the i minimising KL(P || Q). When the minimum is exactly 0 (after
  a ReLU) the first bin takes its neighbour's count first (NVIDIA's pytorch-quantization does
  this), or the exact zeros decide the threshold. The minimum is kept. KL is TensorRT's 8-bit
  method: below 8 bits, and on sparse histograms (pixels take 256 values), it can clip far too
  much; prefer `percentile` there. Outliers more than ~16x beyond the bulk leave fewer than
  128 occupied bins, and then no candidate clips: the search's resolution limit, as in TensorRT.

Two passes over the same images give an exact histogram: the first finds min and max, the
second fills the bins over [min, max].
"""
import math

import numpy as np
import torch

from ..errors import ConvslimError

METHODS = ("minmax", "percentile", "kl")
BINS = 2048


def check_method(method):
    if method not in METHODS:
        raise ConvslimError(f"unknown calibration {method!r}; choose one of {', '.join(METHODS)}")
    return method


def percentile_threshold(hist, edges, percentile):
    """Right edge of the bin where the cumulative share of |x| first reaches `percentile`."""
    if not 0 < percentile <= 100:
        raise ConvslimError(f"percentile must be in (0, 100], got {percentile}")
    cdf = np.cumsum(hist, dtype=np.float64)
    if cdf[-1] <= 0:
        return float(edges[-1])
    i = int(np.searchsorted(cdf, cdf[-1] * percentile / 100.0, side="left"))
    return float(edges[min(i, len(hist) - 1) + 1])


def kl_divergence(p, q):
    """KL(p || q) of two histograms (normalised here); infinite where p has mass and q has none."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / max(p.sum(), 1e-300), q / max(q.sum(), 1e-300)
    support = p > 0
    if (q[support] == 0).any():
        return math.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def kl_threshold_bin(hist, levels=128, start=128, zero_spike=True):
    """Bins i (from max(levels, start) up to all) whose clipping minimises KL(P || Q), TensorRT's search.

    As in NVIDIA's pytorch-quantization, with `zero_spike` the first bin's count is replaced by the
    second's so the exact zeros after a ReLU do not dominate, the search starts at 128 bins whatever
    the bit width (with 16 levels it would otherwise clip at 1/128 of the range), and ties go to
    the widest range.
    """
    hist = np.asarray(hist, dtype=np.float64).copy()
    n = len(hist)
    first = max(levels, start)
    if n <= first:
        return n
    if zero_spike:
        hist[0] = hist[1]
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])   # tail[i] = sum(hist[i:])
    best_i, best_kl = n, math.inf
    for i in range(first, n + 1):
        sliced = hist[:i]
        p = sliced.copy()
        p[-1] += tail[i]
        nonzero = sliced != 0
        starts = (np.arange(levels) * i) // levels                # `levels` near-equal chunks
        merged = np.add.reduceat(sliced, starts)
        counts = np.add.reduceat(nonzero.astype(np.float64), starts)
        chunk = np.repeat(np.arange(levels), np.diff(np.append(starts, i)))
        q = np.where(nonzero, merged[chunk] / np.maximum(counts[chunk], 1), 0.0)
        kl = kl_divergence(p, q)
        if kl <= best_kl:
            best_i, best_kl = i, kl
    return best_i


class RangeObserver:
    """Collects one tensor's statistics over calibration batches and returns its (lo, hi).

    Pass 1 (`observe`) records min and max; pass 2 (`observe_hist`, only needed by the
    saturating methods) fills the histogram of x - min over [0, max - min].
    """

    def __init__(self, method="minmax", *, bits=8, percentile=99.99, bins=BINS):
        self.method = check_method(method)
        self.bits, self.percentile, self.bins = bits, percentile, bins
        self.lo, self.hi = math.inf, -math.inf
        self.hist = None

    @property
    def needs_histogram(self):
        return self.method != "minmax"

    def observe(self, x):
        x = torch.as_tensor(x).detach()
        if x.numel():
            self.lo = min(self.lo, float(x.min()))
            self.hi = max(self.hi, float(x.max()))

    def observe_hist(self, x):
        if self.hist is None:
            self.hist = np.zeros(self.bins, dtype=np.float64)
        span = self.hi - self.lo
        if not span > 0:
            return
        a = (torch.as_tensor(x).detach().float().reshape(-1) - self.lo).clamp_(0, span)
        self.hist += torch.histc(a, bins=self.bins, min=0.0, max=span).double().cpu().numpy()

    def range(self):
        if self.lo > self.hi:
            raise ConvslimError("calibration saw no values (zero calibration images?)")
        span = self.hi - self.lo
        if self.method == "minmax" or not span > 0:
            return self.lo, self.hi
        if self.hist is None:
            raise ConvslimError(f"{self.method} calibration needs the histogram pass")
        edges = np.linspace(0.0, span, self.bins + 1)
        if self.method == "percentile":
            top = percentile_threshold(self.hist, edges, self.percentile)
            bottom = span - percentile_threshold(self.hist[::-1], edges, self.percentile)
            return self.lo + min(bottom, top), self.lo + top
        i = kl_threshold_bin(self.hist, levels=min(2 ** self.bits, self.bins), zero_spike=self.lo == 0)
        return self.lo, self.lo + i * span / self.bins
