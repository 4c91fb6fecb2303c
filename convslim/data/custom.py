"""Your own data behind ``--data file.py:factory`` (or ``package.module:factory``).

The factory is called with whichever of ``seed``, ``val_fraction`` and ``resize`` its signature
accepts, and returns either

- convslim `Splits` (used as they are), or
- the splits themselves: a dict ``{"train": ..., "val": ..., "test": ...}`` (optional keys:
  ``"classes"``, a list of class names, and ``"augment"``, default True: random crop and flip
  while training), or a tuple ``(train, val, test)`` or ``(train, test)``.

Each split is an ``(images, labels)`` pair: images uint8 (N, C, H, W) (a tensor or numpy array;
float images in [0, 1] are scaled to uint8), labels integers 0..classes-1; or a dataset
(anything with ``len`` and ``[i]`` giving ``(image, label)``, the image a PIL image or a CHW
tensor; a DataLoader counts as its dataset). The images are held in memory. A missing ``val`` is
held out of ``train`` (``--val-fraction``, stratified, seeded by ``--seed``); a missing ``test`` is
a fixed stratified 20% of ``train`` (seed 0). Class names come from ``"classes"``, else from the
training dataset's ``.classes``, else are "0", "1", ... The normalisation is the training images'
mean and std unless ``--mean``/``--std`` are given.

    # mydata.py                                   convslim train --data mydata.py:make ...
    def make(seed=0):
        x, y = ...                                 # uint8 (N, 3, 64, 64), int labels
        return {"train": (x[:9000], y[:9000]), "test": (x[9000:], y[9000:]), "classes": names}
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from convslim.data.sources.base import TEST_FRACTION, TEST_SEED, stratified_split
from convslim.errors import ConvslimError
from convslim.usercode import call_factory, import_factory

CONTRACT = ("return convslim Splits, a dict with 'train' and 'test' (and 'val', 'classes', 'augment'), or a "
            "tuple (train, val, test), each split an (images, labels) pair or a dataset")


def load_factory(spec: str, *, val_fraction=0.1, seed=0, resize=None, mean=None, std=None):
    """Call the factory named by ``spec`` and turn what it returns into Splits."""
    from convslim.data import Splits

    out = call_factory(import_factory(spec, "data"), spec, "data", seed=int(seed), val_fraction=float(val_fraction),
                       resize=resize)
    if isinstance(out, Splits):
        splits = out.with_normalization(mean, std) if (mean is not None or std is not None) else out
        return splits if splits.source else _replace(splits, source=spec)
    if isinstance(out, Mapping):
        unknown = sorted(set(out) - {"train", "val", "test", "classes", "augment"})
        if unknown or "train" not in out:
            what = f"unknown keys {', '.join(map(str, unknown))}" if unknown else "no 'train'"
            raise ConvslimError(f"data factory {spec} returned a dict with {what}; {CONTRACT}")
        parts = {k: out.get(k) for k in ("train", "val", "test")}
        classes, augment = out.get("classes"), out.get("augment", True)
    elif isinstance(out, (tuple, list)) and len(out) in (2, 3):
        parts = dict(zip(("train", "val", "test"), out if len(out) == 3 else (out[0], None, out[1])))
        classes, augment = None, True
    else:
        raise ConvslimError(f"data factory {spec} returned {type(out).__name__}; {CONTRACT}")
    name = spec.rpartition(":")[2]
    return make_splits(parts["train"], parts["test"], parts["val"], classes=classes, mean=mean, std=std,
                       augment=augment, val_fraction=val_fraction, seed=seed, name=name, source=spec)


def _replace(splits, **changes):
    import dataclasses
    return dataclasses.replace(splits, **changes)


def _images(x, what: str) -> torch.Tensor:
    """uint8 (N, C, H, W) from a tensor or array of images (float images in [0, 1] are scaled)."""
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach().cpu()
    if t.dim() == 3:
        t = t.unsqueeze(1)                       # (N, H, W): one channel
    if t.dim() != 4:
        raise ConvslimError(f"{what} images must be (N, C, H, W), got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.contiguous()
    if t.dtype.is_floating_point:
        if t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
            raise ConvslimError(f"{what} images must be uint8, or floats in [0, 1] (not normalised: give the "
                                f"normalisation as --mean/--std); got values in [{float(t.min()):.3g}, "
                                f"{float(t.max()):.3g}]")
        return (t * 255).round().to(torch.uint8).contiguous()
    if t.dtype in (torch.int16, torch.int32, torch.int64, torch.int8) and (
            not t.numel() or (int(t.min()) >= 0 and int(t.max()) <= 255)):
        return t.to(torch.uint8).contiguous()
    raise ConvslimError(f"{what} images must be uint8 (or floats in [0, 1]), got {t.dtype}")


def _item_image(img, what: str) -> torch.Tensor:
    """One dataset image (a PIL image or a CHW tensor/array) as a uint8 CHW tensor."""
    if hasattr(img, "getbands") and hasattr(img, "size"):           # a PIL image
        a = np.asarray(img)
        t = torch.from_numpy(a.copy()).permute(2, 0, 1) if a.ndim == 3 else torch.from_numpy(a.copy())[None]
        return _images(t[None], what)[0]
    t = torch.as_tensor(np.asarray(img)) if not isinstance(img, torch.Tensor) else img
    if t.dim() == 2:
        t = t[None]
    return _images(t[None], what)[0]


def _split(obj, what: str):
    """(uint8 images, int64 labels, classes or None) of one split."""
    if isinstance(obj, torch.utils.data.DataLoader):
        obj = obj.dataset
    classes = getattr(obj, "classes", None)
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and not isinstance(obj[0], (tuple, list)) \
            and hasattr(obj[0], "shape"):
        x, y = _images(obj[0], what), obj[1]
    elif hasattr(obj, "__len__") and hasattr(obj, "__getitem__"):
        n = len(obj)
        if n == 0:
            raise ConvslimError(f"the {what} dataset is empty")
        x, ys = None, []
        for i in range(n):
            item = obj[i]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise ConvslimError(f"{what} dataset item {i} is not an (image, label) pair")
            img = _item_image(item[0], f"{what} dataset item {i}:")
            if x is None:
                x = torch.empty((n, *img.shape), dtype=torch.uint8)
            elif img.shape != x.shape[1:]:
                raise ConvslimError(f"{what} dataset images differ in size: item 0 is {tuple(x.shape[1:])}, "
                                    f"item {i} is {tuple(img.shape)}")
            x[i] = img
            ys.append(int(item[1]))
        y = ys
    else:
        raise ConvslimError(f"the {what} split is a {type(obj).__name__}: give an (images, labels) pair or a dataset")
    try:
        y = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)).reshape(-1)
    except (TypeError, ValueError):
        raise ConvslimError(f"{what} labels must be integers") from None
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        raise ConvslimError(f"{what} labels must be integers, got {y.dtype}")
    y = y.to(torch.int64)
    if len(y) != len(x):
        raise ConvslimError(f"{what}: {len(x)} images but {len(y)} labels")
    if len(y) and int(y.min()) < 0:
        raise ConvslimError(f"{what} labels must be 0 or more, got {int(y.min())}")
    return x, y, classes


def make_splits(train, test=None, val=None, *, classes=None, mean=None, std=None, augment=True,
                val_fraction=0.1, seed=0, name="custom", source=""):
    """Splits from your own images and labels (each split an (images, labels) pair or a dataset, as
    in the module docstring). ``val=None``: held out of ``train`` (``val_fraction``, seeded by
    ``seed``); ``test=None``: a fixed stratified 20% of ``train`` (seed 0)."""
    from convslim.data import Splits, channel_stats, check_normalization

    tx, ty, found = _split(train, "train")
    if test is None:
        keep, held = stratified_split(ty, TEST_FRACTION, TEST_SEED)
        sx, sy = tx[held].contiguous(), ty[held]
        tx, ty = tx[keep].contiguous(), ty[keep]
    else:
        sx, sy, _ = _split(test, "test")
    if val is None:
        keep, held = stratified_split(ty, float(val_fraction), int(seed))
        vx, vy = tx[held].contiguous(), ty[held]
        tx, ty = tx[keep].contiguous(), ty[keep]
    else:
        vx, vy, _ = _split(val, "val")
    if len(tx) == 0:
        raise ConvslimError("no training images left")
    for what, x in (("val", vx), ("test", sx)):
        if len(x) and x.shape[1:] != tx.shape[1:]:
            raise ConvslimError(f"{what} images are {tuple(x.shape[1:])} but train images are {tuple(tx.shape[1:])}")
    classes = classes if classes is not None else found
    top = max(int(y.max()) for y in (ty, vy, sy) if len(y)) + 1
    classes = [str(c) for c in classes] if classes is not None else [str(i) for i in range(top)]
    if top > len(classes):
        raise ConvslimError(f"labels go up to {top - 1} but there are {len(classes)} class names")
    mean, std = check_normalization(mean, std, tx.shape[1])
    if mean is None or std is None:
        stats = channel_stats(tx)
        mean, std = mean or stats[0], std or stats[1]
    return Splits(name=name, num_classes=len(classes), classes=classes, train_x=tx, train_y=ty, val_x=vx,
                  val_y=vy, test_x=sx, test_y=sy, mean=mean, std=std, augment=bool(augment), source=source,
                  seed=int(seed), val_fraction=float(val_fraction))
