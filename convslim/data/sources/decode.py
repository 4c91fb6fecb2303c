"""Image decoding shared by folders and archives: bytes or files -> uint8 rows, in order, into a sink.

Large sets are decoded by a pool of worker processes. At most two chunks per worker are in flight,
and a chunk holds about ``CHUNK_BYTES`` of decoded pixels, so the memory this takes does not grow
with the number of images: the rows go to the sink (a file, for the cache) as they arrive.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
from collections import deque

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from convslim.errors import ConvslimError

POOL_MIN_IMAGES = 2048               # below this, decoding in-process is faster than starting a pool
FIRST_CHUNK = 64                     # images in the first chunk, which tells the size of one image
CHUNK_MAX = 512                      # images per chunk at most
CHUNK_BYTES = 4 << 20                # decoded bytes per chunk after the first, about
MAX_WORKERS = 8

# The bytes of an archive being decoded. Pool workers are forked after it is set, so they read
# their members' bytes from this inherited copy instead of receiving them through a pipe.
_ARCHIVE: bytes | None = None


def set_archive(data: bytes | None) -> None:
    global _ARCHIVE
    _ARCHIVE = data


def decode_image(data, name: str, resize: int | None) -> np.ndarray:
    """Image bytes, a file path, or an (offset, size) slice of the archive being read ->
    HxWx3 uint8 RGB array (resized to resize x resize if given)."""
    try:
        if isinstance(data, tuple):
            off, size = data
            data = memoryview(_ARCHIVE)[off:off + size]
        im = Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data)
        if resize is not None:
            im.draft("RGB", (resize, resize))         # JPEG: decode at a reduced scale when much larger
        im = im.convert("RGB")
        if resize is not None and im.size != (resize, resize):
            im = im.resize((resize, resize), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)
    except Exception as e:
        raise ConvslimError(f"cannot read image {name}: {type(e).__name__}: {e}") from None


def size_error(name_a, shape_a, name_b, shape_b) -> ConvslimError:
    return ConvslimError(
        f"images differ in size ({name_a} is {shape_a[1]}x{shape_a[0]}, {name_b} is "
        f"{shape_b[1]}x{shape_b[0]}); pass resize=N to load them all at NxN")


def _decode_chunk(args) -> np.ndarray:
    items, resize = args
    arrays, first = [], None
    for name, data in items:
        a = decode_image(data, name, resize)
        if first is None:
            first = (name, a.shape)
        elif a.shape != first[1]:
            raise size_error(first[0], first[1], name, a.shape)
        arrays.append(a)
    return np.stack(arrays) if arrays else np.zeros((0, 1, 1, 3), np.uint8)


def _payload(chunk):
    """A chunk as a worker can read it: archive slices become bytes where workers are not forked."""
    if _ARCHIVE is not None and "fork" not in mp.get_all_start_methods():
        return [(n, bytes(memoryview(_ARCHIVE)[d[0]:d[0] + d[1]]) if isinstance(d, tuple) else d) for n, d in chunk]
    return chunk


def _decode_stream(items, resize, desc: str, use_pool: bool):
    """Yield (names, HxWx3 uint8 array stack) per chunk of ``items`` ([(name, data)]), in order."""
    bar = tqdm(total=len(items) or None, desc=desc, unit="img", disable=None, leave=False)
    pos, size = 0, FIRST_CHUNK

    def next_chunk():
        nonlocal pos
        chunk = items[pos:pos + size]
        pos += len(chunk)
        return chunk

    def resize_chunks(a):
        nonlocal size
        if len(a):
            per_image = max(1, a[0].nbytes)
            size = int(min(CHUNK_MAX, max(16, CHUNK_BYTES // per_image)))

    try:
        workers = min(os.cpu_count() or 1, MAX_WORKERS)
        if use_pool and workers > 1:
            forked = "fork" in mp.get_all_start_methods()
            ctx = mp.get_context("fork" if forked else None)
            with ctx.Pool(workers) as pool:
                pending: deque = deque()
                first = next_chunk()
                a = _decode_chunk((first, resize))        # sizes the chunks that follow
                resize_chunks(a)
                bar.update(len(a))
                yield [n for n, _ in first], a
                while pos < len(items) or pending:
                    while pos < len(items) and len(pending) < 2 * workers:
                        chunk = next_chunk()
                        pending.append(([n for n, _ in chunk], pool.apply_async(_decode_chunk,
                                                                                 ((_payload(chunk), resize),))))
                    names, result = pending.popleft()
                    a = result.get()
                    bar.update(len(a))
                    yield names, a
        else:
            while pos < len(items):
                chunk = next_chunk()
                a = _decode_chunk((chunk, resize))
                resize_chunks(a)
                bar.update(len(a))
                yield [n for n, _ in chunk], a
    finally:
        bar.close()


def decode_into(sink, items, resize, desc: str) -> None:
    """Decode ``items`` ([(name, data)], in row order) into ``sink`` as uint8 (C, H, W) rows,
    checking that every image has the first one's size."""
    use_pool = len(items) >= POOL_MIN_IMAGES
    ref = None
    for names, a in _decode_stream(items, resize, desc, use_pool):
        if not len(a):
            continue
        if ref is None:
            ref = (names[0], a.shape[1:])
        elif a.shape[1:] != ref[1]:
            raise size_error(ref[0], ref[1], names[0], a.shape[1:])
        sink.write(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
