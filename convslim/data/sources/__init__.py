"""Data sources: read a spec string into uint8 images (train and test), through a decode cache.

Spec strings::

    digits                  scikit-learn's bundled 8x8 digits (no download, no cache)
    cifar10[:PATH]          official python-pickle folder, an image-folder tree, or a .tar.gz of either;
                            without PATH the official archive is downloaded into the cache folder
    cifar100[:PATH]         same, with the 'train'/'test' pickles (fine labels)
    imagefolder:PATH        PATH/train/<class>/* + PATH/test/<class>/*, or PATH/<class>/* (a fixed
                            stratified 20% test split is then held out), or a .tar.gz of such a tree
    file.py:factory         your own data (package.module:factory too): see convslim.data.custom

One module per kind: digits, cifar (the pickles), imagefolder (image trees and folders), archive
(tarballs of either), download (the official CIFAR archives); decode holds the image decoding they
share, cache the decode cache (identity and CRC checked on every read, images read a batch at a
time from disk when the set is large).
"""

from __future__ import annotations

import os
import re

import numpy as np

from convslim.data.sources.base import (IMAGE_EXTS, TEST_DIRS, TEST_FRACTION, TEST_SEED, Built, RawData,
                                        stratified_split)
from convslim.data.sources.cache import (CACHE_KEY_VERSION, CACHE_VERSION, cache_checksum, cache_identity,
                                         cache_path, cached, default_cache_dir, fingerprint_files, images_path,
                                         in_memory_max)
from convslim.data.sources.cifar import (CIFAR10_CLASSES, CIFAR10_FILES, CIFAR100_FILES, PICKLE_NAMES,
                                         cifar_files, find_cifar_pickles, read_cifar_pickles)
from convslim.data.sources.decode import decode_image
from convslim.errors import ConvslimError

KINDS = ("digits", "cifar10", "cifar100", "imagefolder")
KINDS_HELP = "digits, cifar10[:PATH], cifar100[:PATH], imagefolder:PATH, file.py:factory"
DOWNLOADABLE = ("cifar10", "cifar100")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")

__all__ = ["KINDS", "KINDS_HELP", "RawData", "Built", "parse_spec", "load_source", "stratified_split",
           "default_cache_dir", "cache_path", "images_path", "cache_identity", "cache_checksum", "in_memory_max",
           "decode_image", "CIFAR10_CLASSES", "CIFAR10_FILES", "CIFAR100_FILES", "PICKLE_NAMES", "IMAGE_EXTS",
           "TEST_DIRS", "TEST_FRACTION", "TEST_SEED", "CACHE_VERSION", "CACHE_KEY_VERSION"]


def is_factory(spec) -> bool:
    """'path/to/file.py:name' or 'package.module:name' (your own data)."""
    if not isinstance(spec, str):
        return False
    target, sep, attr = spec.strip().rpartition(":")
    if not sep or not attr.isidentifier():
        return False
    return target.endswith(".py") or (target.partition(":")[0].lower() not in KINDS
                                      and _MODULE.fullmatch(target) is not None)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'cifar10:/data/x' -> ('cifar10', '/data/x'); 'digits' and 'cifar10' -> (kind, None);
    'file.py:make' -> ('factory', 'file.py:make')."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConvslimError(f"empty data spec; known kinds: {KINDS_HELP}")
    if is_factory(spec):
        return "factory", spec.strip()
    kind, sep, path = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ConvslimError(f"unknown data kind {kind!r} in {spec!r}; known kinds: {KINDS_HELP}")
    if kind == "digits":
        if path:
            raise ConvslimError(f"the digits data set takes no path (got {spec!r}); write just 'digits'")
        return kind, None
    if not path and (sep or kind not in DOWNLOADABLE):
        more = f" (or just '{kind}' to download it)" if kind in DOWNLOADABLE else ""
        raise ConvslimError(f"data kind {kind!r} needs a path: {kind}:PATH{more}")
    return kind, path or None


def load_source(spec: str, *, resize: int | None = None, cache_dir=None, in_memory=None) -> RawData:
    """Read ``spec`` into a RawData (train + test), decoding once and caching the result.

    ``in_memory``: True holds the images in memory, False reads them a batch at a time from the
    cache file, None (default) decides by size ($CONVSLIM_IN_MEMORY_MAX, default 1 GiB).
    """
    kind, path = parse_spec(spec)
    if kind == "factory":
        raise ConvslimError(f"{spec} is a data factory: load it with convslim.load_data")
    if resize is not None:
        if isinstance(resize, bool) or not isinstance(resize, (int, np.integer)) or resize < 1:
            raise ConvslimError(f"resize must be a positive integer (square side in pixels), got {resize!r}")
        resize = int(resize)
    if kind == "digits":
        from convslim.data.sources.digits import load_digits
        return load_digits(resize)
    if path is None:                                     # cifar10 / cifar100: the official archive
        from convslim.data.sources.download import fetch
        path = fetch(kind, os.path.abspath(os.path.expanduser(cache_dir if isinstance(cache_dir, (str, os.PathLike))
                                                              else default_cache_dir())))

    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise ConvslimError(f"data path not found: {path}")
    if os.path.isdir(path):
        pickle_dir = find_cifar_pickles(path) if kind in ("cifar10", "cifar100") else None
        if pickle_dir is not None:
            fp = fingerprint_files(cifar_files(kind, pickle_dir))
            return cached(kind, pickle_dir, resize, fp, cache_dir,
                          lambda sink: read_cifar_pickles(kind, pickle_dir, resize, sink), in_memory)
        from convslim.data.sources.imagefolder import read_image_dir, scan_image_dir
        relpaths, fp = scan_image_dir(path)
        if not relpaths:
            hint = (" and no CIFAR batch files (data_batch_1..5 + test_batch, or train + test)"
                    if kind in ("cifar10", "cifar100") else "")
            raise ConvslimError(f"no images found in {path} (expected <class>/*.jpg|png folders){hint}")
        return cached(kind, path, resize, fp, cache_dir,
                      lambda sink: read_image_dir(kind, path, relpaths, resize, sink), in_memory)
    # a file: must be a tar archive
    from convslim.data.sources.archive import check_tar, read_tar
    check_tar(path)
    fp = fingerprint_files([path])
    return cached(kind, path, resize, fp, cache_dir, lambda sink: read_tar(kind, path, resize, sink), in_memory)
