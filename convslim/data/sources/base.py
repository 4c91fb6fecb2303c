"""What every source shares: the RawData it yields, the fixed test hold-out, and the stderr note."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
TEST_DIRS = ("test", "val")          # the held-out split of a train/ + test/ tree ('val' as in ImageNet)
TEST_FRACTION = 0.2
TEST_SEED = 0                        # the held-out test split never moves with the user's seed


@dataclass
class RawData:
    """What a source yields before the train/val split: uint8 NCHW images and int64 labels.

    The images are CPU tensors, or `DiskImages` (rows of the cache file, read a batch at a time);
    ``hold`` then says whether the caller is to read them into memory (a set small enough), which
    `load_data` does one split at a time. ``train_hist`` is the (C, 256) per-channel histogram of
    the training images when the source has it (the cache stores it), so that the normalisation
    needs no pass over them.
    """
    name: str
    classes: list
    train_x: object
    train_y: torch.Tensor
    test_x: object
    test_y: torch.Tensor
    train_hist: torch.Tensor | None = None
    hold: bool = True


@dataclass
class Built:
    """What a builder made: the images went to ``images`` (a sink), training rows first."""
    name: str
    classes: list
    train_y: torch.Tensor
    test_y: torch.Tensor
    images: object


def note(msg: str) -> None:
    print(f"convslim: {msg}", file=sys.stderr, flush=True)


def stratified_split(y, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified split: returns (keep, held) index tensors, each in ascending order.

    Each class gives round(fraction * n_class) of its samples to the held part.
    """
    y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).astype(np.int64, copy=False)
    if fraction <= 0 or len(y) == 0:
        return torch.arange(len(y)), torch.zeros(0, dtype=torch.long)
    rng = np.random.default_rng(int(seed))
    order = np.argsort(y, kind="stable")
    counts = np.bincount(y - y.min())
    held, start = [], 0
    for n in counts:
        k = int(round(fraction * n))
        if k:
            held.append(order[start:start + n][rng.permutation(int(n))[:k]])
        start += n
    mask = np.zeros(len(y), dtype=bool)
    if held:
        mask[np.concatenate(held)] = True
    return torch.from_numpy(np.flatnonzero(~mask)), torch.from_numpy(np.flatnonzero(mask))
