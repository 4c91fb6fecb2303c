"""Batch-wide augmentation with tensor ops (no per-image Python loop).

Random numbers are drawn on the CPU from a ``torch.Generator`` (so a run is repeatable whatever
the device) and only the small per-sample offset tensors travel to the batch's device; the
pixels themselves never leave it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def default_pad(height: int) -> int:
    """Crop padding for an image height: 4 for 32x32 CIFAR, scaled as H//8 for other sizes."""
    return max(0, int(height) // 8)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4,
                     *, flip: bool = True) -> torch.Tensor:
    """Random crop after ``pad`` pixels of zero padding, plus a random horizontal flip.

    ``x`` is a uint8 (or any dtype) batch ``(B, C, H, W)`` on any device; the result has the same
    shape, dtype and device. Every sample gets its own crop offset and flip. ``pad=0`` with
    ``flip=False`` returns the batch unchanged.
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    pad = int(pad)
    if b == 0 or (pad <= 0 and not flip):
        return x
    dev = x.device
    if pad > 0:
        off_y = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        off_x = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    else:
        off_y = off_x = torch.zeros(b, dtype=torch.long)
    flips = (torch.rand(b, generator=generator) < 0.5) if flip else torch.zeros(b, dtype=torch.bool)

    rows = off_y[:, None] + torch.arange(h)[None, :]                 # (B, H) into the padded image
    cols = off_x[:, None] + torch.arange(w)[None, :]                 # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)           # a flip reverses the columns
    rows, cols = rows.to(dev, non_blocking=True), cols.to(dev, non_blocking=True)

    src = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x           # one pad for the whole batch
    wp = w + 2 * pad
    # one gather: for every sample, the flat position in its padded image of each output pixel
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)
    out = src.reshape(b, c, -1).gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out
