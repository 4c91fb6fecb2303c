"""Data sets held in memory as uint8 tensors, split into train/val/test, batched with tensor ops.

    >>> from convslim.data import load_data
    >>> d = load_data("digits")                      # or "cifar10:PATH", "cifar100:PATH", "imagefolder:PATH"
    >>> for x, y in d.loader("train", 128):          # x float32 normalized (B,C,H,W), y int64
    ...     ...

The validation split is held out of the training data (seeded by ``seed``) for every
accept/reject decision; the test split is never touched by the seed and only gives the final
figure. Where a source has no test folder (digits, a plain class-per-folder tree) a fixed
stratified 20% test split is held out with seed 0, so test figures stay comparable across seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from convslim.data.augment import default_pad, random_crop_flip
from convslim.data.loader import BatchLoader, normalize, shard_indices
from convslim.data.sources import KINDS, default_cache_dir, load_source, parse_spec, stratified_split
from convslim.errors import ConvslimError

__all__ = ["load_data", "Splits", "BatchLoader", "random_crop_flip", "normalize", "KINDS",
           "default_cache_dir", "parse_spec", "channel_stats"]

SPLITS = ("train", "val", "test")


def channel_stats(x: torch.Tensor) -> tuple[tuple, tuple]:
    """Exact per-channel mean and (population) std of a uint8 (N, C, H, W) tensor, in [0, 1] units.

    Uses a 256-bin histogram per channel, so it needs no float copy of the data.
    """
    if len(x) == 0:
        c = x.shape[1]
        return (0.0,) * c, (1.0,) * c
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        h = torch.bincount(x[:, c].reshape(-1).to(torch.int64) if x.device.type != "cpu" else x[:, c].reshape(-1),
                           minlength=256).to(torch.float64).cpu()
        n = h.sum()
        m = (h * levels).sum() / n
        v = (h * (levels - m) ** 2).sum() / n
        means.append(float(m))
        stds.append(max(float(v.sqrt()), 1e-6))
    return tuple(means), tuple(stds)


@dataclass(eq=False)
class Splits:
    """A data set split three ways, as uint8 (N, C, H, W) images and int64 labels (CPU tensors)."""
    name: str
    num_classes: int
    classes: list
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
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
        if dev.type != "cpu":
            # one device copy per split, shared by every loader made from these Splits
            key = (split, str(dev))
            if key not in self._resident:
                self._resident[key] = (x.to(dev), y.to(dev))
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

    def drop_device_copies(self) -> None:
        self._resident.clear()

    def __repr__(self) -> str:
        s = self.sizes()
        return (f"Splits({self.name!r}, classes={self.num_classes}, shape={tuple(self.input_shape)}, "
                f"train={s['train']}, val={s['val']}, test={s['test']}, augment={self.augment})")


def load_data(spec: str, *, val_fraction: float = 0.1, seed: int = 0, resize: int | None = None,
              cache_dir=None) -> Splits:
    """Load a data set by spec ('digits', 'cifar10:PATH', 'cifar100:PATH', 'imagefolder:PATH').

    Decoded images are cached in ``cache_dir`` (default: $CONVSLIM_CACHE or ~/.cache/convslim;
    ``cache_dir=False`` turns the cache off). ``val_fraction`` of the training images (stratified,
    seeded by ``seed``) become the validation split; the test split is never touched.
    """
    try:
        vf = float(val_fraction)
    except (TypeError, ValueError):
        raise ConvslimError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}") from None
    if not 0.0 <= vf < 1.0:
        raise ConvslimError(f"val_fraction must be in [0, 1), got {val_fraction}")
    kind, _ = parse_spec(spec)
    raw = load_source(spec, resize=resize, cache_dir=cache_dir)
    if len(raw.train_x) == 0:
        raise ConvslimError(f"no training images in {spec}")
    keep, held = stratified_split(raw.train_y, vf, seed)
    train_x, train_y = raw.train_x[keep].contiguous(), raw.train_y[keep].contiguous()
    val_x, val_y = raw.train_x[held].contiguous(), raw.train_y[held].contiguous()
    if vf > 0 and len(val_x) == 0:
        raise ConvslimError(f"val_fraction={vf} leaves no validation images out of {len(raw.train_x)} "
                            f"training images; use a larger val_fraction or more data")
    if len(train_x) == 0:
        raise ConvslimError(f"val_fraction={vf} leaves no training images")
    mean, std = channel_stats(train_x)
    return Splits(name=raw.name, num_classes=len(raw.classes), classes=list(raw.classes),
                  train_x=train_x, train_y=train_y.to(torch.int64), val_x=val_x, val_y=val_y.to(torch.int64),
                  test_x=raw.test_x.contiguous(), test_y=raw.test_y.to(torch.int64).contiguous(),
                  mean=mean, std=std, augment=kind != "digits", source=spec, seed=int(seed),
                  val_fraction=vf)
