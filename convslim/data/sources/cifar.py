"""CIFAR-10 and CIFAR-100 in the official python-pickle format (a folder, or read from an archive).

An image tree of CIFAR (train/<class>/*.png) is read as any image tree (imagefolder.py), a tarball
of either by archive.py; downloading the official archive is download.py.
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import torch

from convslim.data.sources.base import Built
from convslim.errors import ConvslimError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR100_FILES = ["train", "test"]
PICKLE_NAMES = set(CIFAR10_FILES) | set(CIFAR100_FILES) | {"batches.meta", "meta"}
RESIZE_ROWS = 4096                   # images interpolated at a time when resizing


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


def cifar_files(kind, folder) -> list:
    names = CIFAR10_FILES if kind == "cifar10" else CIFAR100_FILES
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise ConvslimError(f"{kind} folder {folder} is missing its batch files: {', '.join(missing)} "
                            f"(expected {', '.join(names)})")
    return [os.path.join(folder, n) for n in names]


def find_cifar_pickles(path) -> str | None:
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


def _write_rows(sink, x: np.ndarray, resize) -> None:
    """(N, 3, 32, 32) uint8 into the sink, resized to resize x resize (antialiased) if asked."""
    if resize is None or resize == 32:
        sink.write(np.ascontiguousarray(x))
        return
    for s in range(0, len(x), RESIZE_ROWS):
        t = torch.from_numpy(np.ascontiguousarray(x[s:s + RESIZE_ROWS])).float()
        t = torch.nn.functional.interpolate(t, size=(resize, resize), mode="bilinear", align_corners=False,
                                            antialias=True).round().clamp(0, 255).to(torch.uint8)
        sink.write(t.numpy())


def _cifar_assemble(kind, where, read, resize, make_sink) -> Built:
    """read(basename) -> bytes or None. Builds the data set from the official pickles."""
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
    del blobs
    tr, te = parts[:-1], parts[-1]
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
    n_train = sum(len(p[0]) for p in tr)
    sink = make_sink(n_train + len(te[0]), n_train)
    for x, _ in tr + [te]:
        _write_rows(sink, x, resize)
    train_y = torch.from_numpy(np.concatenate([p[1] for p in tr]))
    return Built(kind, classes, train_y, torch.from_numpy(te[1]), sink)


def read_cifar_pickles(kind, folder, resize, make_sink) -> Built:
    def read(n):
        p = os.path.join(folder, n)
        if not os.path.isfile(p):
            return None
        with open(p, "rb") as f:
            return f.read()
    return _cifar_assemble(kind, folder, read, resize, make_sink)


def cifar_from_pickle_bytes(kind, path, pickles: dict, resize, make_sink) -> Built:
    by_base: dict = {}
    for name, data in sorted(pickles.items()):
        by_base.setdefault(name.rsplit("/", 1)[-1], data)
    return _cifar_assemble(kind, path, by_base.get, resize, make_sink)
