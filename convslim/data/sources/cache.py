"""The decode cache: a source's images decoded once, kept as uint8 on disk, checked on every read.

A cache is two files under ``cache_dir``, named by the source's kind, path, resize and fingerprint:

- ``<name>.npy``: every image, uint8 (N, C, H, W), training rows first. It is written a chunk at a
  time as images are decoded, and read a batch at a time (`DiskImages`) when the set is larger
  than ``CONVSLIM_IN_MEMORY_MAX`` (default 1 GiB); a smaller set is read into memory by
  `load_data`, one split at a time (``RawData.hold``), so memory holds each image once.
- ``<name>.pt``: the header (torch, weights-only): the identity of the source it was made from
  (kind, path, resize, and the size and mtime of each file, or a digest of every image's, for a
  folder), the name, class names, labels, the training images' per-channel histogram (so the
  normalisation needs no pass over the images), the images' shape, and a CRC-32 of all of it and
  of every byte of the images.

Both are checked on every read: a cache that is damaged, made by another version, or made from
another source (a valid cache of another data set copied in its place) is rebuilt from the source
with a one-line note on stderr, never used and never fatal. A new cache is written beside its final
name, read back and checked the same way, then moved into place (images first, header last). A
folder where no cache can be written costs speed, not correctness: the images are then decoded
into memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import zlib

import numpy as np
import torch

from convslim.data.disk import READ_BYTES, ArraySink, DiskImages, FileSink, SinkError, _File
from convslim.data.sources.base import RawData, note
from convslim.errors import ConvslimError

CACHE_VERSION = 3                    # the files' content; 2: identity and checksum stored and checked;
                                     # 3: images in a .npy beside the header, read a batch at a time
CACHE_KEY_VERSION = 1                # the file's name: a cache of an older version is replaced in place
HEADER_TENSORS = ("train_y", "test_y", "train_hist")
IN_MEMORY_MAX = 1 << 30              # a cached set at most this large is read into memory whole


def default_cache_dir() -> str:
    return os.environ.get("CONVSLIM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "convslim")


def in_memory_max() -> int:
    """Bytes of images up to which a cached set is held in memory: $CONVSLIM_IN_MEMORY_MAX (a
    number of bytes, with an optional K, M, G or T suffix), else 1 GiB."""
    text = os.environ.get("CONVSLIM_IN_MEMORY_MAX", "").strip()
    if not text:
        return IN_MEMORY_MAX
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", text.lower())
    if not m:
        raise ConvslimError(f"CONVSLIM_IN_MEMORY_MAX must be a size in bytes such as 2G or 500M, got {text!r}")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def fingerprint_files(files) -> list:
    out = []
    for f in files:
        st = os.stat(f)
        out.append((os.path.abspath(f), st.st_size, st.st_mtime_ns))
    return out


def cache_path(kind: str, path: str, resize, fingerprint, cache_dir) -> str:
    """The header's path; the images are `images_path` of it."""
    key = repr((CACHE_KEY_VERSION, kind, os.path.abspath(path), resize, fingerprint)).encode("utf-8", "surrogateescape")
    digest = hashlib.sha256(key).hexdigest()[:20]
    base = os.path.basename(path.rstrip(os.sep)) or "data"
    for ext in (".tar.gz", ".tgz", ".tar"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in base)[:40]
    tag = f"-r{resize}" if resize else ""
    return os.path.join(cache_dir, f"{kind}-{safe}{tag}-{digest}.pt")


def images_path(header_path: str) -> str:
    return header_path[: -len(".pt")] + ".npy"


def cache_identity(kind: str, path: str, resize, fingerprint) -> str:
    """What a cache was made from: kind, source path, resize, and the source's size and mtime (each
    file's, or a digest of every image's for a folder). Stored in the cache and compared on read."""
    return json.dumps({"version": CACHE_VERSION, "kind": kind, "source": os.path.abspath(path), "resize": resize,
                       "fingerprint": fingerprint}, sort_keys=True)


def cache_checksum(name, classes, tensors, images_shape, images_crc: int) -> int:
    """CRC-32 of a cache's content: name, classes, each header tensor's dtype, shape and raw bytes,
    and the images' shape and the CRC-32 of their bytes (streamed from the .npy file, about 0.1 s
    for CIFAR's 180 MB)."""
    crc = zlib.crc32(json.dumps([name, list(classes)]).encode("utf-8", "surrogateescape"))
    for key in HEADER_TENSORS:
        t = tensors[key].contiguous()
        crc = zlib.crc32(f"{key}:{t.dtype}:{list(t.shape)}".encode(), crc)
        crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), crc)
    return zlib.crc32(f"images:{[int(s) for s in images_shape]}:{int(images_crc)}".encode(), crc)


def _check_header(d, identity) -> str | None:
    """None if `d` (a loaded header) could be a sound cache of `identity`, else why not."""
    if not isinstance(d, dict) or d.get("version") != CACHE_VERSION:
        return "made by another convslim version" if isinstance(d, dict) else "not a data cache"
    if d.get("identity") != identity:
        return "made from another source"
    if not isinstance(d.get("classes"), list) or not all(isinstance(c, str) for c in d["classes"]) \
            or not isinstance(d.get("name"), str):
        return "damaged class names"
    if not all(isinstance(d.get(k), torch.Tensor) for k in HEADER_TENSORS):
        return "missing tensors"
    ys, hist, shape = (d["train_y"], d["test_y"]), d["train_hist"], d.get("shape")
    if any(y.dtype != torch.int64 or y.ndim != 1 for y in ys) or hist.dtype != torch.int64 \
            or not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(s, int) for s in shape) \
            or shape[0] != len(ys[0]) + len(ys[1]) or tuple(hist.shape) != (shape[1], 256):
        return "tensors of the wrong type or shape"
    return None


def _stream(file: _File) -> int:
    """CRC-32 of a .npy file's data bytes, read a block at a time."""
    total = math.prod(file.shape)
    crc = 0
    scratch = memoryview(np.empty(min(READ_BYTES, total), np.uint8)).cast("B")
    for s in range(0, total, READ_BYTES):
        n = min(READ_BYTES, total - s)
        file.readinto(scratch[:n], file.offset + s)
        crc = zlib.crc32(scratch[:n], crc)
    return crc


def _load(header_path: str, npy_path: str, identity: str, in_memory) -> tuple[RawData | None, str | None]:
    """(RawData, None) from a sound cache, else (None, why not)."""
    try:
        d = torch.load(header_path, map_location="cpu", weights_only=True)
        why = _check_header(d, identity)
    except Exception as e:  # a damaged cache is rebuilt, never fatal
        return None, f"unreadable: {type(e).__name__}"
    if why is not None:
        return None, why
    try:
        file = _File(npy_path)
    except FileNotFoundError:
        return None, "its image file is missing"
    except (OSError, ValueError) as e:
        return None, f"its image file is damaged: {e}"
    if list(file.shape) != d["shape"]:
        return None, "its image file is of another data set"
    try:
        crc = _stream(file)
    except OSError as e:
        return None, f"its image file is unreadable: {e}"
    if d.get("checksum") != cache_checksum(d["name"], d["classes"], d, file.shape, crc):
        return None, "its content does not match its checksum"
    n = len(d["classes"])
    if any(len(y) and (int(y.min()) < 0 or int(y.max()) >= n) for y in (d["train_y"], d["test_y"])):
        return None, "labels out of range"
    n_train = len(d["train_y"])
    images = DiskImages(file)
    hold = in_memory if in_memory is not None else math.prod(file.shape) <= in_memory_max()
    return RawData(d["name"], list(d["classes"]), images.take(slice(0, n_train)), d["train_y"],
                   images.take(slice(n_train, None)), d["test_y"], d["train_hist"], hold=bool(hold)), None


def build_in_memory(build) -> RawData:
    """Run a builder with its images decoded into one in-memory array."""
    built = build(lambda n, n_train: ArraySink(n, n_train))
    x = built.images.finish()
    n_train = len(built.train_y)
    return RawData(built.name, list(built.classes), x[:n_train], built.train_y.to(torch.int64), x[n_train:],
                   built.test_y.to(torch.int64), torch.from_numpy(built.images.hist))


class _CacheWriteError(Exception):
    pass


def _write(build, tmp: str, tmp_npy: str, identity: str, path, resize, in_memory) -> RawData:
    """Build into the cache's temporary files, write the header, read both back and check them."""
    sinks = []

    def make_sink(n, n_train):
        sinks.append(FileSink(n, n_train, tmp_npy))
        return sinks[-1]

    try:
        built = build(make_sink)
        built.images.finish()
    except SinkError as e:                      # the cache file failed (a full disk), not the source
        raise _CacheWriteError(e) from None
    finally:
        for s in sinks:
            s.close()
    sink = built.images
    header = {"version": CACHE_VERSION, "name": built.name, "classes": list(built.classes), "identity": identity,
              "source": path, "resize": resize, "train_y": built.train_y.to(torch.int64).contiguous(),
              "test_y": built.test_y.to(torch.int64).contiguous(), "train_hist": torch.from_numpy(sink.hist),
              "shape": [int(s) for s in sink.shape]}
    header["checksum"] = cache_checksum(built.name, built.classes, header, sink.shape, sink.crc)
    try:
        with open(tmp, "wb") as f:
            torch.save(header, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:
        raise _CacheWriteError(e) from None
    raw, why = _load(tmp, tmp_npy, identity, in_memory)                    # read back
    if raw is None:
        raise _CacheWriteError(f"the written cache does not read back ({why})")
    return raw


def cached(kind, path, resize, fingerprint, cache_dir, build, in_memory=None) -> RawData:
    """The source's RawData from its cache, building (and caching) it first when there is no sound one.

    ``build(make_sink)`` decodes the source: it calls ``make_sink(n_rows, n_train)`` once and writes
    the images into the sink it gets, training rows first. The images come back as `DiskImages` of
    the cache file; ``hold`` says whether they are to be held in memory: ``in_memory`` when given,
    else whether they are at most `in_memory_max` bytes. ``cache_dir=False``: no cache, images
    decoded into memory.
    """
    if cache_dir is False:
        return build_in_memory(build)
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
    cpath = cache_path(kind, path, resize, fingerprint, cache_dir)
    npy = images_path(cpath)
    identity = cache_identity(kind, path, resize, fingerprint)
    if os.path.isfile(cpath):
        raw, why = _load(cpath, npy, identity, in_memory)
        if raw is not None:
            return raw
        note(f"data cache {cpath} failed its check ({why}); rebuilding it from {path}")
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=cache_dir)
        os.close(fd)
    except OSError as e:  # a read-only cache folder costs speed, not correctness
        note(f"could not write data cache in {cache_dir}: {e}")
        return build_in_memory(build)
    tmp_npy = images_path(tmp)
    try:
        try:
            raw = _write(build, tmp, tmp_npy, identity, path, resize, in_memory)   # source errors pass
            try:
                umask = os.umask(0)
                os.umask(umask)
                for p in (tmp, tmp_npy):
                    os.chmod(p, 0o666 & ~umask)      # mkstemp makes it private; a cache can be shared
                os.replace(tmp_npy, npy)             # images first: a header never names missing images
                os.replace(tmp, cpath)
            except OSError as e:
                raise _CacheWriteError(e) from None
        finally:
            for p in (tmp, tmp_npy):
                try:
                    os.unlink(p)
                except OSError:
                    pass
    except _CacheWriteError as e:
        note(f"could not write data cache in {cache_dir}: {e}")
        return build_in_memory(build)
    for x in (raw.train_x, raw.test_x):
        if isinstance(x, DiskImages):
            x._file.path = npy                       # the open file was renamed into place
    return raw
