"""Data sources: read a spec string into uint8 tensors (train and test), with a decode cache.

Spec strings::

    digits                  scikit-learn's bundled 8x8 digits (no download, no cache)
    cifar10:PATH            official python-pickle folder, an image-folder tree, or a .tar.gz of either
    cifar100:PATH           same, with the 'train'/'test' pickles (fine labels)
    imagefolder:PATH        PATH/train/<class>/* + PATH/test/<class>/*, or PATH/<class>/* (a fixed
                            stratified 20% test split is then held out), or a .tar.gz of such a tree

Decoded images are cached (torch .pt, written atomically) under ``cache_dir`` keyed by the source's
absolute path, size and mtime (every image file's, for a folder) and ``resize``. The cache file
holds that identity and a CRC-32 of its content (every tensor's bytes, shapes, the class names),
and both are checked on every read: a cache that is damaged, made by another version, or made
from another source (a valid cache of another data set copied in its place) is rebuilt from the
source with a one-line note on stderr, never used and never fatal. A new cache is read back and
checked the same way before it is moved into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import pickle
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from convslim.errors import ConvslimError

KINDS = ("digits", "cifar10", "cifar100", "imagefolder")
KINDS_HELP = "digits, cifar10:PATH, cifar100:PATH, imagefolder:PATH"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
TEST_DIRS = ("test", "val")          # the held-out split of a train/ + test/ tree ('val' as in ImageNet)
TEST_FRACTION = 0.2
TEST_SEED = 0                        # the held-out test split never moves with the user's seed
CACHE_VERSION = 2                    # the file's content; 2: identity and checksum stored and checked
CACHE_KEY_VERSION = 1                # the file's name: a cache of an older version is replaced in place
POOL_MIN_IMAGES = 2048               # below this, decoding in-process is faster than starting a pool
CHUNK = 512

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR100_FILES = ["train", "test"]
PICKLE_NAMES = set(CIFAR10_FILES) | set(CIFAR100_FILES) | {"batches.meta", "meta"}


@dataclass
class RawData:
    """What a source yields before the train/val split: uint8 NCHW tensors and int64 labels."""
    name: str
    classes: list
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


# --------------------------------------------------------------------------------------------
# spec parsing and entry point
# --------------------------------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[str, str | None]:
    """'cifar10:/data/x' -> ('cifar10', '/data/x'); 'digits' -> ('digits', None)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConvslimError(f"empty data spec; known kinds: {KINDS_HELP}")
    kind, sep, path = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ConvslimError(f"unknown data kind {kind!r} in {spec!r}; known kinds: {KINDS_HELP}")
    if kind == "digits":
        if path:
            raise ConvslimError(f"the digits data set takes no path (got {spec!r}); write just 'digits'")
        return kind, None
    if not path:
        raise ConvslimError(f"data kind {kind!r} needs a path: {kind}:PATH")
    return kind, path


def load_source(spec: str, *, resize: int | None = None, cache_dir=None) -> RawData:
    """Read ``spec`` into a RawData (train + test), decoding once and caching the result."""
    kind, path = parse_spec(spec)
    if resize is not None:
        if isinstance(resize, bool) or not isinstance(resize, (int, np.integer)) or resize < 1:
            raise ConvslimError(f"resize must be a positive integer (square side in pixels), got {resize!r}")
        resize = int(resize)
    if kind == "digits":
        return _load_digits(resize)

    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise ConvslimError(f"data path not found: {path}")
    if os.path.isdir(path):
        pickle_dir = _find_cifar_pickles(path) if kind in ("cifar10", "cifar100") else None
        if pickle_dir is not None:
            files = _cifar_files(kind, pickle_dir)
            fp = _fingerprint_files(files)
            return _cached(kind, pickle_dir, resize, fp, cache_dir, lambda: _read_cifar_pickles(kind, pickle_dir, resize))
        entries = _list_image_dir(path)
        if not entries:
            hint = (" and no CIFAR batch files (data_batch_1..5 + test_batch, or train + test)"
                    if kind in ("cifar10", "cifar100") else "")
            raise ConvslimError(f"no images found in {path} (expected <class>/*.jpg|png folders){hint}")
        fp = _fingerprint_entries(entries)
        return _cached(kind, path, resize, fp, cache_dir, lambda: _read_image_dir(kind, path, entries, resize))
    # a file: must be a tar archive
    _check_tar(path)
    fp = _fingerprint_files([path])
    return _cached(kind, path, resize, fp, cache_dir, lambda: _read_tar(kind, path, resize))


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------

def _load_digits(resize) -> RawData:
    from sklearn.datasets import load_digits

    d = load_digits()
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


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------

def stratified_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified split: returns (keep, held) index tensors, each in ascending order.

    Each class gives round(fraction * n_class) of its samples to the held part.
    """
    y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).astype(np.int64, copy=False)
    if fraction <= 0 or len(y) == 0:
        return torch.arange(len(y)), torch.zeros(0, dtype=torch.long)
    rng = np.random.default_rng(int(seed))
    order = np.argsort(y, kind="stable")
    counts = np.bincount(y - y.min())
    held, start = [], 0
    for n in counts:
        k = int(round(fraction * n))
        if k:
            held.append(order[start:start + n][rng.permutation(int(n))[:k]])
        start += n
    mask = np.zeros(len(y), dtype=bool)
    if held:
        mask[np.concatenate(held)] = True
    return torch.from_numpy(np.flatnonzero(~mask)), torch.from_numpy(np.flatnonzero(mask))


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------

def default_cache_dir() -> str:
    return os.environ.get("CONVSLIM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "convslim")


def _fingerprint_files(files) -> list:
    out = []
    for f in files:
        st = os.stat(f)
        out.append((os.path.abspath(f), st.st_size, st.st_mtime_ns))
    return out


def _fingerprint_entries(entries) -> list:
    h = hashlib.sha256()
    for rel, _full, size, mtime in entries:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return [len(entries), h.hexdigest()]


def cache_path(kind: str, path: str, resize, fingerprint, cache_dir) -> str:
    key = repr((CACHE_KEY_VERSION, kind, os.path.abspath(path), resize, fingerprint)).encode("utf-8", "surrogateescape")
    digest = hashlib.sha256(key).hexdigest()[:20]
    base = os.path.basename(path.rstrip(os.sep)) or "data"
    for ext in (".tar.gz", ".tgz", ".tar"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in base)[:40]
    tag = f"-r{resize}" if resize else ""
    return os.path.join(cache_dir, f"{kind}-{safe}{tag}-{digest}.pt")


CACHE_TENSORS = ("train_x", "train_y", "test_x", "test_y")


def cache_identity(kind: str, path: str, resize, fingerprint) -> str:
    """What a cache was made from: kind, source path, resize, and the source's size and mtime (each
    file's, or a digest of every image's for a folder). Stored in the cache and compared on read."""
    return json.dumps({"version": CACHE_VERSION, "kind": kind, "source": os.path.abspath(path), "resize": resize,
                       "fingerprint": fingerprint}, sort_keys=True)


def cache_checksum(name, classes, tensors) -> int:
    """CRC-32 of a cache's content: name, classes, and each tensor's dtype, shape and raw bytes
    (about 0.1 s for CIFAR's 180 MB)."""
    crc = zlib.crc32(json.dumps([name, list(classes)]).encode("utf-8", "surrogateescape"))
    for key in CACHE_TENSORS:
        t = tensors[key].contiguous()
        crc = zlib.crc32(f"{key}:{t.dtype}:{list(t.shape)}".encode(), crc)
        crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), crc)
    return crc


def _check_cache(d, identity) -> str | None:
    """None if `d` (a loaded cache file) is a sound cache of `identity`, else why not."""
    if not isinstance(d, dict) or d.get("version") != CACHE_VERSION:
        return "made by another convslim version" if isinstance(d, dict) else "not a data cache"
    if d.get("identity") != identity:
        return "made from another source"
    if not isinstance(d.get("classes"), list) or not all(isinstance(c, str) for c in d["classes"]) \
            or not isinstance(d.get("name"), str):
        return "damaged class names"
    if not all(isinstance(d.get(k), torch.Tensor) for k in CACHE_TENSORS):
        return "missing tensors"
    xs, ys = (d["train_x"], d["test_x"]), (d["train_y"], d["test_y"])
    if any(x.dtype != torch.uint8 or x.ndim != 4 for x in xs) or any(y.dtype != torch.int64 or y.ndim != 1 for y in ys) \
            or any(len(x) != len(y) for x, y in zip(xs, ys)):
        return "tensors of the wrong type or shape"
    if d.get("checksum") != cache_checksum(d["name"], d["classes"], d):
        return "its content does not match its checksum"
    n = len(d["classes"])
    if any(len(y) and (int(y.min()) < 0 or int(y.max()) >= n) for y in ys):
        return "labels out of range"
    return None


def _note(msg: str) -> None:
    print(f"convslim: {msg}", file=sys.stderr, flush=True)


def _cached(kind, path, resize, fingerprint, cache_dir, build) -> RawData:
    if cache_dir is False:
        return build()
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
    cpath = cache_path(kind, path, resize, fingerprint, cache_dir)
    identity = cache_identity(kind, path, resize, fingerprint)
    if os.path.isfile(cpath):
        try:
            d = torch.load(cpath, map_location="cpu", weights_only=True)
            why = _check_cache(d, identity)
        except Exception as e:  # a damaged cache is rebuilt, never fatal
            why = f"unreadable: {type(e).__name__}"
        if why is None:
            return RawData(d["name"], list(d["classes"]), d["train_x"], d["train_y"], d["test_x"], d["test_y"])
        _note(f"data cache {cpath} failed its check ({why}); rebuilding it from {path}")
    raw = build()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=cache_dir)
        try:
            tensors = {"train_x": raw.train_x.contiguous(), "train_y": raw.train_y.contiguous(),
                       "test_x": raw.test_x.contiguous(), "test_y": raw.test_y.contiguous()}
            with os.fdopen(fd, "wb") as f:
                torch.save({"version": CACHE_VERSION, "name": raw.name, "classes": list(raw.classes),
                            "identity": identity, "source": path, "resize": resize,
                            "checksum": cache_checksum(raw.name, raw.classes, tensors), **tensors}, f)
                f.flush()
                os.fsync(f.fileno())
            why = _check_cache(torch.load(tmp, map_location="cpu", weights_only=True), identity)  # read back
            if why is not None:
                raise OSError(f"the written cache does not read back ({why})")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)              # mkstemp makes it private; a cache can be shared
            os.replace(tmp, cpath)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as e:  # a read-only cache folder costs speed, not correctness
        _note(f"could not write data cache in {cache_dir}: {e}")
    return raw


# --------------------------------------------------------------------------------------------
# image decoding (runs in worker processes for large sets)
# --------------------------------------------------------------------------------------------

# The bytes of an archive being decoded. Pool workers are forked after it is set, so they read
# their members' bytes from this inherited copy instead of receiving them through a pipe.
_ARCHIVE: bytes | None = None


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


def _size_error(name_a, shape_a, name_b, shape_b) -> ConvslimError:
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
            raise _size_error(first[0], first[1], name, a.shape)
        arrays.append(a)
    return np.stack(arrays) if arrays else np.zeros((0, 1, 1, 3), np.uint8)


def _decode_all(chunks, total: int | None, resize, desc: str, use_pool: bool) -> tuple[list, list]:
    """Decode an iterable of [(name, data), ...] chunks; returns (names, arrays per chunk)."""
    names: list = []
    arrays: list = []

    def tagged():
        for ch in chunks:
            names.extend(n for n, _ in ch)
            yield ch, resize

    bar = tqdm(total=total or None, desc=desc, unit="img", disable=None, leave=False)
    try:
        workers = min(os.cpu_count() or 1, 8)
        if use_pool and workers > 1:
            forked = "fork" in mp.get_all_start_methods()
            ctx = mp.get_context("fork" if forked else None)
            if not forked and _ARCHIVE is not None:   # workers do not inherit the archive: send bytes
                chunks = ([(n, bytes(memoryview(_ARCHIVE)[d[0]:d[0] + d[1]])) for n, d in ch] for ch in chunks)
            with ctx.Pool(workers) as pool:
                for a in pool.imap(_decode_chunk, tagged()):
                    arrays.append(a)
                    bar.update(len(a))
        else:
            for args in tagged():
                a = _decode_chunk(args)
                arrays.append(a)
                bar.update(len(a))
    finally:
        bar.close()
    return names, arrays


def _chunks(items, size=CHUNK):
    buf = []
    for it in items:
        buf.append(it)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _stack_chunks(names, arrays) -> torch.Tensor:
    """Concatenate decoded chunks into one NCHW uint8 tensor, checking that sizes agree."""
    arrays = [a for a in arrays if len(a)]
    if not arrays:
        raise ConvslimError("no images decoded")
    pos = 0
    ref_shape, ref_name = arrays[0].shape[1:], names[0]
    for a in arrays:
        if a.shape[1:] != ref_shape:
            raise _size_error(ref_name, ref_shape, names[pos], a.shape[1:])
        pos += len(a)
    x = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# layout of an image tree (shared by folders and tarballs)
# --------------------------------------------------------------------------------------------

def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTS)


def _resolve_layout(relpaths, where: str):
    """Map image paths (posix, relative) to splits and classes.

    Returns (classes, train_items, test_items) where items are lists of (position, class_index)
    into ``relpaths``; test_items is None when the tree has no test folder (hold one out).
    Accepts train/<class>/..., test/<class>/... (optionally nested one or more folders deep, e.g.
    cifar10/train/...) or plain <class>/... .
    """
    parts = [tuple(p for p in rp.split("/") if p not in ("", ".")) for rp in relpaths]
    if not parts:
        raise ConvslimError(f"no images found in {where}")
    # strip leading folders that every path shares (PATH/cifar10/train/... -> train/...)
    depth = 0
    while True:
        heads = {p[depth] if len(p) > depth + 2 else None for p in parts}
        if len(heads) != 1 or None in heads:
            break
        head = heads.pop()
        if head.lower() == "train" or head.lower() in TEST_DIRS:
            break
        depth += 1
    parts = [p[depth:] for p in parts]
    heads = {p[0].lower() for p in parts if len(p) >= 3}
    split_layout = "train" in heads
    train, test = [], []
    if split_layout:
        test_dir = next((t for t in TEST_DIRS if t in heads), None)
        for i, p in enumerate(parts):
            if len(p) < 3:
                continue
            h = p[0].lower()
            if h == "train":
                train.append((i, p[1]))
            elif h == test_dir:
                test.append((i, p[1]))
        if not train:
            raise ConvslimError(f"no training images found in {where} (expected train/<class>/*)")
        classes = sorted({c for _, c in train})
        unknown = sorted({c for _, c in test} - set(classes))
        if unknown:
            raise ConvslimError(f"test classes without a train folder in {where}: {', '.join(unknown[:5])}")
        cidx = {c: k for k, c in enumerate(classes)}
        return classes, [(i, cidx[c]) for i, c in train], ([(i, cidx[c]) for i, c in test] if test_dir else None)
    for i, p in enumerate(parts):
        if len(p) >= 2:
            train.append((i, p[0]))
    if not train:
        raise ConvslimError(f"no images found in class folders in {where} (expected <class>/*.jpg|png)")
    classes = sorted({c for _, c in train})
    cidx = {c: k for k, c in enumerate(classes)}
    return classes, [(i, cidx[c]) for i, c in train], None


def _build_from_tree(kind, where, relpaths, decoded_names, x_all) -> RawData:
    """Resolve the layout of ``relpaths`` and pick train/test rows out of the decoded tensor.

    ``decoded_names[k]`` is the relative path of row k of ``x_all``. Rows are ordered by
    (class, path), so the result does not depend on the order of files on disk or in an archive.
    """
    classes, train_items, test_items = _resolve_layout(relpaths, where)
    row_of = {n: k for k, n in enumerate(decoded_names)}

    def pick(items):
        items = sorted(items, key=lambda t: (t[1], relpaths[t[0]]))
        rows = torch.tensor([row_of[relpaths[i]] for i, _ in items], dtype=torch.long)
        y = torch.tensor([c for _, c in items], dtype=torch.long)
        return x_all[rows].contiguous(), y

    tx, ty = pick(train_items)
    if test_items is None:
        tr, te = stratified_split(ty, TEST_FRACTION, TEST_SEED)
        return RawData(kind, classes, tx[tr].contiguous(), ty[tr], tx[te].contiguous(), ty[te])
    if not test_items:
        raise ConvslimError(f"the test folder in {where} holds no images")
    sx, sy = pick(test_items)
    return RawData(kind, classes, tx, ty, sx, sy)


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------

def _list_image_dir(root: str) -> list:
    """Every image file under root: (relpath posix, full path, size, mtime_ns), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if _is_image(fn):
                full = os.path.join(dirpath, fn)
                st = os.stat(full)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                out.append((rel, full, st.st_size, st.st_mtime_ns))
    out.sort()
    return out


def _read_image_dir(kind, root, entries, resize) -> RawData:
    relpaths = [e[0] for e in entries]
    classes, train_items, test_items = _resolve_layout(relpaths, root)   # fail fast, before decoding
    used = sorted({i for i, _ in train_items} | {i for i, _ in (test_items or [])})
    items = [(entries[i][0], entries[i][1]) for i in used]
    names, arrays = _decode_all(_chunks(items), len(items), resize, f"decoding {os.path.basename(root)}",
                                use_pool=len(items) >= POOL_MIN_IMAGES)
    x_all = _stack_chunks(names, arrays)
    return _build_from_tree(kind, root, relpaths, names, x_all)


# --------------------------------------------------------------------------------------------
# tarballs
# --------------------------------------------------------------------------------------------

def _check_tar(path: str) -> None:
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


def _read_tar(kind, path, resize) -> RawData:
    global _ARCHIVE
    data = _read_archive_bytes(path)
    images, pickles = [], {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                if _is_image(m.name):
                    images.append((m.name, (m.offset_data, m.size)))
                elif kind in ("cifar10", "cifar100") and m.name.rsplit("/", 1)[-1] in PICKLE_NAMES:
                    pickles[m.name] = data[m.offset_data:m.offset_data + m.size]
    except (tarfile.TarError, EOFError) as e:
        raise ConvslimError(f"damaged tar archive {path}: {e}") from None
    if not images:
        if pickles:
            return _cifar_from_pickle_bytes(kind, path, pickles, resize)
        raise ConvslimError(f"no images found in archive {path}")
    relpaths = [n for n, _ in images]
    classes, train_items, test_items = _resolve_layout(relpaths, path)   # fail fast, before decoding
    used = sorted({i for i, _ in train_items} | {i for i, _ in (test_items or [])})
    items = [images[i] for i in used]
    _ARCHIVE = data
    try:
        names, arrays = _decode_all(_chunks(items), len(items), resize, f"decoding {os.path.basename(path)}",
                                    use_pool=len(items) >= POOL_MIN_IMAGES)
    finally:
        _ARCHIVE = None
    x_all = _stack_chunks(names, arrays)
    return _build_from_tree(kind, path, relpaths, names, x_all)


# --------------------------------------------------------------------------------------------
# CIFAR python pickles
# --------------------------------------------------------------------------------------------

class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and plain containers (a CIFAR batch needs nothing else)."""
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(data: bytes, name: str) -> dict:
    try:
        d = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise ConvslimError(f"cannot read CIFAR batch file {name}: {type(e).__name__}: {e}") from None
    if not isinstance(d, dict):
        raise ConvslimError(f"cannot read CIFAR batch file {name}: not a dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_files(kind, folder) -> list:
    names = CIFAR10_FILES if kind == "cifar10" else CIFAR100_FILES
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise ConvslimError(f"{kind} folder {folder} is missing its batch files: {', '.join(missing)} "
                            f"(expected {', '.join(names)})")
    return [os.path.join(folder, n) for n in names]


def _find_cifar_pickles(path) -> str | None:
    """The folder holding CIFAR pickles: PATH itself or one level down (cifar-10-batches-py/)."""
    def has(folder):
        try:
            names = set(os.listdir(folder))
        except OSError:
            return False
        files = {n for n in names if os.path.isfile(os.path.join(folder, n))}
        return bool(files & (PICKLE_NAMES | {"batches.meta"})) and not any(
            os.path.isdir(os.path.join(folder, d)) and d.lower() == "train" for d in names)
    if has(path):
        return path
    subs = [os.path.join(path, d) for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))]
    for s in subs:
        if has(s):
            return s
    return None


def _cifar_batch(d: dict, name: str, label_key: str):
    if "data" not in d or label_key not in d:
        raise ConvslimError(f"CIFAR batch file {name} lacks '{'data' if 'data' not in d else label_key}'")
    x = np.asarray(d["data"], dtype=np.uint8)
    if x.ndim != 2 or x.shape[1] != 3072:
        raise ConvslimError(f"CIFAR batch file {name}: data has shape {x.shape}, expected (N, 3072)")
    y = np.asarray(d[label_key], dtype=np.int64)
    if len(y) != len(x):
        raise ConvslimError(f"CIFAR batch file {name}: {len(x)} images but {len(y)} labels")
    return x.reshape(-1, 3, 32, 32), y


def _cifar_assemble(kind, where, read, resize) -> RawData:
    """read(basename) -> bytes or None. Builds RawData from the official pickles."""
    if kind == "cifar10":
        files, label_key, meta_name, meta_key = CIFAR10_FILES, "labels", "batches.meta", "label_names"
    else:
        files, label_key, meta_name, meta_key = CIFAR100_FILES, "fine_labels", "meta", "fine_label_names"
    blobs = {n: read(n) for n in files}
    missing = [n for n, b in blobs.items() if b is None]
    if missing:
        raise ConvslimError(f"{kind} data {where} is missing its batch files: {', '.join(missing)} "
                            f"(expected {', '.join(files)})")
    parts = [_cifar_batch(_unpickle(blobs[n], n), n, label_key) for n in files]
    tr, te = parts[:-1], parts[-1]
    train_x = np.concatenate([p[0] for p in tr])
    train_y = np.concatenate([p[1] for p in tr])
    n_classes = 10 if kind == "cifar10" else 100
    classes = None
    meta = read(meta_name)
    if meta is not None:
        try:
            names = _unpickle(meta, meta_name).get(meta_key)
            if names is not None:
                classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except ConvslimError:
            classes = None
    if classes is None:
        classes = CIFAR10_CLASSES if kind == "cifar10" else [str(i) for i in range(n_classes)]
    def to_t(x):
        t = torch.from_numpy(np.ascontiguousarray(x))
        if resize is not None and resize != 32:
            t = torch.nn.functional.interpolate(t.float(), size=(resize, resize), mode="bilinear",
                                                align_corners=False, antialias=True).round().clamp(0, 255).to(torch.uint8)
        return t.contiguous()
    return RawData(kind, classes, to_t(train_x), torch.from_numpy(train_y), to_t(te[0]), torch.from_numpy(te[1]))


def _read_cifar_pickles(kind, folder, resize) -> RawData:
    def read(n):
        p = os.path.join(folder, n)
        if not os.path.isfile(p):
            return None
        with open(p, "rb") as f:
            return f.read()
    return _cifar_assemble(kind, folder, read, resize)


def _cifar_from_pickle_bytes(kind, path, pickles: dict, resize) -> RawData:
    by_base: dict = {}
    for name, data in sorted(pickles.items()):
        by_base.setdefault(name.rsplit("/", 1)[-1], data)
    return _cifar_assemble(kind, path, by_base.get, resize)
