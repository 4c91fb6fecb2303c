"""Data sets as uint8 images split into train/val/test, batched with tensor ops.

    >>> from convslim.data import load_data
    >>> d = load_data("digits")                      # or "cifar10[:PATH]", "cifar100[:PATH]", "imagefolder:PATH",
    ...                                              # "file.py:factory"
    >>> for x, y in d.loader("train", 128):          # x float32 normalized (B,C,H,W), y int64
    ...     ...

The validation split is held out of the training data (seeded by ``seed``) for every
accept/reject decision; the test split is never touched by the seed and only gives the final
figure. Where a source has no test folder (digits, a plain class-per-folder tree) a fixed
stratified 20% test split is held out with seed 0, so test figures stay comparable across seeds.

A split's images are a uint8 CPU tensor, or, for a set larger than $CONVSLIM_IN_MEMORY_MAX (default
1 GiB), `DiskImages` read a batch at a time from the decode cache: memory then stays flat however
large the data set (see convslim.data.disk).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from convslim.data.augment import default_pad, random_crop_flip
from convslim.data.disk import DiskImages, channel_histogram, is_disk, take_rows, to_device
from convslim.data.loader import DEVICE_RESIDENT_MAX_BYTES, BatchLoader, normalize, shard_indices
from convslim.data.sources import KINDS, default_cache_dir, load_source, parse_spec, stratified_split
from convslim.errors import ConvslimError

__all__ = ["load_data", "Splits", "BatchLoader", "DiskImages", "random_crop_flip", "normalize", "KINDS",
           "default_cache_dir", "parse_spec", "channel_stats", "check_normalization", "make_splits"]

SPLITS = ("train", "val", "test")


def stats_from_histogram(hist: torch.Tensor) -> tuple[tuple, tuple]:
    """Per-channel mean and (population) std, in [0, 1] units, from (C, 256) value counts."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for h in hist.to(torch.float64):
        n = h.sum()
        if n == 0:
            means.append(0.0)
            stds.append(1.0)
            continue
        m = (h * levels).sum() / n
        v = (h * (levels - m) ** 2).sum() / n
        means.append(float(m))
        stds.append(max(float(v.sqrt()), 1e-6))
    return tuple(means), tuple(stds)


def channel_stats(x) -> tuple[tuple, tuple]:
    """Exact per-channel mean and (population) std of uint8 (N, C, H, W) images (a tensor or
    DiskImages), in [0, 1] units.

    Uses a 256-bin histogram per channel, built a block of rows at a time, so it needs no float
    copy of the data and never holds more than one block.
    """
    return stats_from_histogram(channel_histogram(x))


def check_normalization(mean, std, channels: int) -> tuple[tuple | None, tuple | None]:
    """The mean and std a user gives (None where not given) as tuples of ``channels`` floats, in
    [0, 1] units (pixel / 255); a bad value stops with one line."""
    out = []
    for what, values in (("mean", mean), ("std", std)):
        if values is None:
            out.append(None)
            continue
        if isinstance(values, str):
            values = [v for v in values.replace(",", " ").split()]
        elif isinstance(values, (int, float)) or (isinstance(values, torch.Tensor) and values.dim() == 0):
            values = [values]
        try:
            vals = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise ConvslimError(f"{what} must be numbers, one per channel, e.g. 0.485,0.456,0.406; "
                                f"got {values!r}") from None
        if len(vals) != channels:
            raise ConvslimError(f"{what} has {len(vals)} value{'s' if len(vals) != 1 else ''} but the images have "
                                f"{channels} channel{'s' if channels != 1 else ''}; give one per channel")
        if not all(math.isfinite(v) for v in vals):
            raise ConvslimError(f"{what} must be finite numbers, got {', '.join(f'{v:g}' for v in vals)}")
        if what == "std" and any(v <= 0 for v in vals):
            raise ConvslimError(f"std must be positive, got {', '.join(f'{v:g}' for v in vals)}")
        if what == "mean" and any(not 0 <= v <= 1 for v in vals):
            raise ConvslimError(f"mean must be in [0, 1] (pixel values scaled to 0..1, not 0..255), got "
                                f"{', '.join(f'{v:g}' for v in vals)}")
        out.append(vals)
    return out[0], out[1]


@dataclass(eq=False)
class Splits:
    """A data set split three ways, as uint8 (N, C, H, W) images and int64 labels (CPU tensors).

    The images of a large set are `DiskImages` (rows of the decode cache, read a batch at a time)
    rather than tensors; loaders and `calibration` read them the same way."""
    name: str
    num_classes: int
    classes: list
    train_x: torch.Tensor | DiskImages
    train_y: torch.Tensor
    val_x: torch.Tensor | DiskImages
    val_y: torch.Tensor
    test_x: torch.Tensor | DiskImages
    test_y: torch.Tensor
    mean: tuple
    std: tuple
    augment: bool
    source: str = ""
    seed: int = 0
    val_fraction: float = 0.1
    _resident: dict = field(default_factory=dict, repr=False)

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) of one image."""
        return tuple(int(v) for v in self.train_x.shape[1:])

    @property
    def on_disk(self) -> bool:
        """True when the images are read from the cache file a batch at a time."""
        return is_disk(self.train_x)

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in SPLITS:
            raise ConvslimError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, f"{split}_x"), getattr(self, f"{split}_y")

    def sizes(self) -> dict:
        return {s: len(self.tensors(s)[0]) for s in SPLITS}

    def loader(self, split: str = "train", batch_size: int = 128, *, shuffle: bool | None = None,
               augment: bool | None = None, drop_last: bool = False, seed: int = 0, device="cpu",
               rank: int = 0, world_size: int = 1, channels_last: bool = False,
               limit: int | None = None, even: bool = True) -> BatchLoader:
        """A BatchLoader over one split. Defaults: shuffle for train only; augment for train only and
        only when the data set calls for it (``self.augment``: CIFAR and image folders, not digits)."""
        x, y = self.tensors(split)
        if shuffle is None:
            shuffle = split == "train"
        if augment is None:
            augment = self.augment and split == "train"
        dev = torch.device(device)
        if dev.type != "cpu" and x.numel() <= DEVICE_RESIDENT_MAX_BYTES:
            # one device copy per split, shared by every loader made from these Splits (copied a block
            # at a time from disk, so host memory holds one block); a larger split stays on the host
            # and the loader moves a batch at a time
            key = (split, str(dev))
            if key not in self._resident:
                self._resident[key] = (to_device(x, dev), y.to(dev))
            x, y = self._resident[key]
        return BatchLoader(x, y, self.mean, self.std, batch_size, shuffle=shuffle, augment=augment,
                           drop_last=drop_last, seed=seed, device=dev, rank=rank, world_size=world_size,
                           channels_last=channels_last, limit=limit, even=even)

    def calibration(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` training images (a seeded random subset, no augmentation) as a normalized float
        CPU tensor, for importance scoring and quantization calibration."""
        n = int(n)
        if n < 1:
            raise ConvslimError(f"calibration needs at least one image, got n={n}")
        n = min(n, len(self.train_x))
        g = torch.Generator().manual_seed(int(seed))
        idx = torch.sort(torch.randperm(len(self.train_x), generator=g)[:n])[0]
        return normalize(self.train_x[idx], self.mean, self.std)

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the float input the models are trained on."""
        return normalize(x_uint8, self.mean, self.std)

    def with_normalization(self, mean=None, std=None) -> "Splits":
        """These splits with the given mean and/or std (in [0, 1] units, one per channel; the
        normalisation a model's weights were trained with) in place of the current ones."""
        mean, std = check_normalization(mean, std, self.input_shape[0])
        return dataclasses.replace(self, mean=mean or self.mean, std=std or self.std)

    def drop_device_copies(self) -> None:
        self._resident.clear()

    def __repr__(self) -> str:
        s = self.sizes()
        return (f"Splits({self.name!r}, classes={self.num_classes}, shape={tuple(self.input_shape)}, "
                f"train={s['train']}, val={s['val']}, test={s['test']}, augment={self.augment})")


def load_data(spec: str, *, val_fraction: float = 0.1, seed: int = 0, resize: int | None = None,
              cache_dir=None, mean=None, std=None, in_memory: bool | None = None) -> Splits:
    """Load a data set by spec ('digits', 'cifar10[:PATH]', 'cifar100[:PATH]', 'imagefolder:PATH',
    'file.py:factory').

    Decoded images are cached in ``cache_dir`` (default: $CONVSLIM_CACHE or ~/.cache/convslim;
    ``cache_dir=False`` turns the cache off and holds the images in memory). 'cifar10' and
    'cifar100' without a path download the official archive into that folder (MD5 checked).
    ``val_fraction`` of the training images (stratified, seeded by ``seed``) become the validation
    split; the test split is never touched.

    ``mean``/``std``: the normalisation (per channel, in [0, 1] units) a model's weights were
    trained with, used instead of the training images' own statistics.
    ``in_memory``: True holds the images in memory, False reads them a batch at a time from the
    cache file (flat memory however large the set), None decides by size ($CONVSLIM_IN_MEMORY_MAX,
    default 1 GiB).
    ``file.py:factory`` (or ``package.module:factory``) is your own data: see `make_splits`.
    """
    try:
        vf = float(val_fraction)
    except (TypeError, ValueError):
        raise ConvslimError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}") from None
    if not 0.0 <= vf < 1.0:
        raise ConvslimError(f"val_fraction must be in [0, 1), got {val_fraction}")
    kind, _ = parse_spec(spec)
    if kind == "factory":
        from convslim.data.custom import load_factory
        return load_factory(spec, val_fraction=vf, seed=seed, resize=resize, mean=mean, std=std)
    raw = load_source(spec, resize=resize, cache_dir=cache_dir, in_memory=in_memory)
    if len(raw.train_x) == 0:
        raise ConvslimError(f"no training images in {spec}")
    keep, held = stratified_split(raw.train_y, vf, seed)
    if vf > 0 and len(held) == 0:
        raise ConvslimError(f"val_fraction={vf} leaves no validation images out of {len(raw.train_x)} "
                            f"training images; use a larger val_fraction or more data")
    if len(keep) == 0:
        raise ConvslimError(f"val_fraction={vf} leaves no training images")
    channels = raw.train_x.shape[1]
    mean, std = check_normalization(mean, std, channels)
    train_x, train_y = take_rows(raw.train_x, keep), raw.train_y[keep].contiguous()
    val_x, val_y = take_rows(raw.train_x, held), raw.train_y[held].contiguous()
    test_x = raw.test_x if is_disk(raw.test_x) else raw.test_x.contiguous()
    if raw.hold:                         # small enough: each split read into memory (each image once)
        train_x, val_x, test_x = (x.materialize() if is_disk(x) else x for x in (train_x, val_x, test_x))
    if mean is None or std is None:
        if raw.train_hist is not None and len(held) < len(keep):
            # the source's histogram of every training image, less the validation images: only
            # those are read (from disk for a large set)
            stats = stats_from_histogram(raw.train_hist - channel_histogram(val_x))
        else:
            stats = channel_stats(train_x)
        mean, std = mean or stats[0], std or stats[1]
    return Splits(name=raw.name, num_classes=len(raw.classes), classes=list(raw.classes),
                  train_x=train_x, train_y=train_y.to(torch.int64), val_x=val_x, val_y=val_y.to(torch.int64),
                  test_x=test_x, test_y=raw.test_y.to(torch.int64).contiguous(),
                  mean=mean, std=std, augment=kind != "digits", source=spec, seed=int(seed),
                  val_fraction=vf)


def make_splits(*args, **kwargs) -> Splits:
    """Splits from your own images and labels: see convslim.data.custom.make_splits."""
    from convslim.data.custom import make_splits as _make
    return _make(*args, **kwargs)
