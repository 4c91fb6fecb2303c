"""scikit-learn's bundled 8x8 digits: no download, no cache."""

from __future__ import annotations

import numpy as np
import torch

from convslim.data.sources.base import TEST_FRACTION, TEST_SEED, RawData, stratified_split


def load_digits(resize) -> RawData:
    from sklearn.datasets import load_digits as sklearn_digits

    d = sklearn_digits()
    x = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]   # N,1,8,8
    y = d.target.astype(np.int64)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if resize is not None and resize != 8:
        xt = torch.nn.functional.interpolate(xt.float(), size=(resize, resize), mode="bilinear",
                                             align_corners=False).round().clamp(0, 255).to(torch.uint8)
    yt = torch.from_numpy(y)
    classes = [str(int(c)) for c in d.target_names]
    tr, te = stratified_split(yt, TEST_FRACTION, TEST_SEED)
    return RawData("digits", classes, xt[tr].contiguous(), yt[tr], xt[te].contiguous(), yt[te])
