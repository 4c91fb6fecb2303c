"""What a batch is, whatever loader made it: a tensor, an (input, target, ...) tuple or list, or a
dict. Kept apart from the Task protocol (task.py) because the lowest layers read batches too:
checkpoint takes the input shape from one, the trainer re-estimates BatchNorm from them."""
import itertools
from collections.abc import Mapping

import torch

from .errors import ConvslimError


def split_batch(batch):
    """(input, target or None) from a batch as loaders give them: a tensor, a tuple or list
    (input first, target second), or a dict with 'input'/'image'/'x' and 'target'/'label'/'y'."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in ("input", "inputs", "image", "images", "x") if k in batch), None)
        y = next((batch[k] for k in ("target", "targets", "label", "labels", "y") if k in batch), None)
    elif isinstance(batch, (tuple, list)) and batch:
        x, y = batch[0], batch[1] if len(batch) > 1 else None
    else:
        x, y = None, None
    if not isinstance(x, torch.Tensor):
        raise ConvslimError(f"a batch must be a tensor, an (input, target) pair or a dict with an 'input' "
                            f"tensor; got {type(batch).__name__}")
    return x, y if isinstance(y, torch.Tensor) else None


def take_batches(batches, n, device=None):
    """The first `n` batches as lists of inputs and targets (targets None when a batch has none),
    moved to `device`."""
    if batches is None:
        raise ConvslimError("this step needs batches (an iterable of inputs or (input, target) pairs)")
    xs, ys = [], []
    for batch in itertools.islice(iter(batches), n):
        x, y = split_batch(batch)
        xs.append(x.to(device) if device is not None else x)
        ys.append(y.to(device) if y is not None and device is not None else y)
    if not xs:
        raise ConvslimError("the batches are empty: no input to score, calibrate or re-estimate with")
    return xs, ys


def take_images(batches, n, device=None):
    """At least min(n, available) input images from the batches, as one tensor."""
    out, seen = [], 0
    for batch in iter(batches):
        x, _ = split_batch(batch)
        out.append(x)
        seen += len(x)
        if seen >= n:
            break
    if not out:
        raise ConvslimError("the batches are empty: no images to calibrate with")
    images = torch.cat(out)[:n]
    return images.to(device) if device is not None else images
