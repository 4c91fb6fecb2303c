"""Batching: uint8 images -> (normalized float32, int64) batches, with tensor ops only.

The split stays uint8: a tensor, or `DiskImages` (a large set, read from the decode cache a batch
at a time). A batch is one index gather (one read of those rows from disk), one transfer (none when
the split already lives on the device), one batch-wide crop/flip, and one fused scale-and-shift.
"""

from __future__ import annotations

import math

import torch

from convslim.data.augment import default_pad, random_crop_flip
from convslim.data.disk import to_device
from convslim.errors import ConvslimError

# A split at most this large is moved to an accelerator once and gathered there (no per-batch copy).
DEVICE_RESIDENT_MAX_BYTES = 4 << 30


def normalize(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 ((x/255) - mean) / std, keeping the memory format."""
    dev = x_uint8.device
    m = torch.as_tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    return x_uint8.float().mul_(1.0 / (255.0 * s)).sub_(m / s)


def shard_indices(order: torch.Tensor, rank: int, world_size: int, even: bool = True) -> torch.Tensor:
    """DistributedSampler's rule: pad the list by repeating its start to a multiple of world_size,
    then rank r takes positions r, r + world_size, ... (so every rank gets as many samples).
    With ``even=False`` nothing is repeated (exact evaluation: every sample counted once)."""
    n = len(order)
    if world_size <= 1:
        return order
    if not even:
        return order[rank::world_size]
    per_rank = math.ceil(n / world_size) if n else 0
    total = per_rank * world_size
    if total > n:
        reps = math.ceil(total / n)
        order = order.repeat(reps)[:total]
    return order[rank:total:world_size]


class BatchLoader:
    """Iterate over (x, y) batches of a uint8 split (a tensor, or DiskImages read a batch at a time).

    x: float32 normalized (B, C, H, W) on ``device`` (channels_last if asked); y: int64 (B,).
    ``len()`` is the number of batches this rank yields per epoch. Call ``set_epoch(e)`` before each
    epoch: the order is a permutation drawn from ``torch.Generator`` seeded with ``seed + epoch``
    (the same on every rank), sharded across ranks like ``DistributedSampler``.
    ``limit`` keeps a fixed, seeded random subset of that many images (stable across epochs).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int = 128, *,
                 shuffle: bool = False, augment: bool = False, pad: int | None = None,
                 drop_last: bool = False, seed: int = 0, device="cpu", rank: int = 0,
                 world_size: int = 1, channels_last: bool = False, limit: int | None = None,
                 even: bool = True):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ConvslimError(f"BatchLoader needs a uint8 (N, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
        if len(x) != len(y):
            raise ConvslimError(f"BatchLoader: {len(x)} images but {len(y)} labels")
        if int(batch_size) < 1:
            raise ConvslimError(f"batch_size must be at least 1, got {batch_size}")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ConvslimError(f"rank must be in [0, world_size): got rank={rank}, world_size={world_size}")
        if limit is not None and int(limit) < 0:
            raise ConvslimError(f"limit must be a non-negative number of images, got {limit}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.pad = default_pad(x.shape[2]) if pad is None else int(pad)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.channels_last = bool(channels_last)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.epoch = 0

        self.dataset_size = len(x)
        if limit is not None and int(limit) < len(x):
            g = torch.Generator().manual_seed(self.seed)
            self._subset = torch.sort(torch.randperm(len(x), generator=g)[: int(limit)])[0]
        else:
            self._subset = None
        self.num_images = len(self._subset) if self._subset is not None else len(x)
        self.even = bool(even)
        if self.even:
            self.num_samples = math.ceil(self.num_images / self.world_size) if self.num_images else 0
        else:
            self.num_samples = len(range(self.rank, self.num_images, self.world_size))

        # keep the data where gathering is cheapest: on the accelerator when it fits (copied a block at
        # a time from disk); never a whole host copy of a split
        resident = (self.device.type != "cpu" and x.numel() <= DEVICE_RESIDENT_MAX_BYTES)
        if x.device != self.device and resident:
            x, y = to_device(x, self.device), y.to(self.device)
        self.x, self.y = x, y
        self._pin = self.device.type == "cuda" and x.device.type == "cpu"
        self._scale = None

    # -- sizes and epochs ------------------------------------------------------------------------
    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x.shape[1:])

    def indices(self) -> torch.Tensor:
        """This rank's sample indices (into the split) for the current epoch, in batch order."""
        n = self.num_images
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self._subset is not None:
            order = self._subset[order]
        return shard_indices(order, self.rank, self.world_size, self.even)

    # -- iteration -------------------------------------------------------------------------------
    def _norm_consts(self):
        if self._scale is None:
            m = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
            s = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
            self._scale, self._shift = 1.0 / (255.0 * s), m / s
        return self._scale, self._shift

    def __iter__(self):
        idx = self.indices()
        nb = len(self)
        scale, shift = self._norm_consts()
        gen = None
        if self.augment:
            # differs per epoch and per rank, repeatable from the seed
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 4099 + self.rank + 1)
        x_dev = self.x.device
        for b in range(nb):
            bi = idx[b * self.batch_size:(b + 1) * self.batch_size]
            bi_dev = bi.to(x_dev, non_blocking=True) if x_dev.type != "cpu" else bi
            xb, yb = self.x[bi_dev], self.y[bi_dev]
            if xb.device != self.device:
                if self._pin:
                    xb, yb = xb.pin_memory(), yb.pin_memory()
                xb = xb.to(self.device, non_blocking=True)
                yb = yb.to(self.device, non_blocking=True)
            if gen is not None:
                xb = random_crop_flip(xb, gen, self.pad)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)   # on uint8: a quarter of the bytes
            out = xb.float().mul_(scale).sub_(shift)         # .float() keeps channels_last
            yield out, yb

    def __repr__(self) -> str:
        return (f"BatchLoader(images={self.num_images}, batch_size={self.batch_size}, batches={len(self)}, "
                f"shuffle={self.shuffle}, augment={self.augment}, device={self.device}, "
                f"rank={self.rank}/{self.world_size})")
