"""Tar archives (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz) of an image tree or of the CIFAR pickles.

The decompressed tar stream is held in memory while it is decoded (random access to members
without seeking back and forth in a compressed stream); the decoded images are not: they go to
the sink as they are decoded.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib

from convslim.data.sources import decode
from convslim.data.sources.base import Built
from convslim.data.sources.cifar import PICKLE_NAMES, cifar_from_pickle_bytes
from convslim.data.sources.imagefolder import build_tree, is_image
from convslim.errors import ConvslimError


def check_tar(path: str) -> None:
    try:
        with tarfile.open(path, "r:*") as tf:
            tf.next()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ConvslimError(f"not a readable tar archive (expected a folder or a .tar.gz/.tgz): {path} ({e})") from None


def _read_archive_bytes(path: str) -> bytes:
    """The whole (decompressed) tar stream in memory: random access to members without seeking
    back and forth inside a compressed stream."""
    import bz2
    import gzip
    import lzma

    with open(path, "rb") as f:
        magic = f.read(6)
    try:
        if magic[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        if magic[:3] == b"BZh":
            with bz2.open(path, "rb") as f:
                return f.read()
        if magic == b"\xfd7zXZ\x00":
            with lzma.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise ConvslimError(f"damaged archive {path}: {e}") from None


def read_tar(kind, path, resize, make_sink) -> Built:
    data = _read_archive_bytes(path)
    images, pickles = [], {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                if is_image(m.name):
                    images.append((m.name, (m.offset_data, m.size)))
                elif kind in ("cifar10", "cifar100") and m.name.rsplit("/", 1)[-1] in PICKLE_NAMES:
                    pickles[m.name] = data[m.offset_data:m.offset_data + m.size]
    except (tarfile.TarError, EOFError) as e:
        raise ConvslimError(f"damaged tar archive {path}: {e}") from None
    if not images:
        if pickles:
            del data
            return cifar_from_pickle_bytes(kind, path, pickles, resize, make_sink)
        raise ConvslimError(f"no images found in archive {path}")
    decode.set_archive(data)
    try:
        return build_tree(kind, path, [n for n, _ in images], images.__getitem__, resize, make_sink,
                          f"decoding {os.path.basename(path)}")
    finally:
        decode.set_archive(None)
