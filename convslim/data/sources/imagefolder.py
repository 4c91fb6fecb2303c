"""Image trees (a folder, or the members of an archive): the layout, and a folder's images.

The layout of a tree is resolved from its paths alone, before any image is decoded, into the final
row order (training rows, then test rows, each by class and path). Images are then decoded in that
order straight into a sink, so nothing is reordered (or held) afterwards.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from convslim.data.sources.base import IMAGE_EXTS, TEST_DIRS, TEST_FRACTION, TEST_SEED, Built, stratified_split
from convslim.data.sources.decode import decode_into
from convslim.errors import ConvslimError


def is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTS)


def _parts(relpath: str) -> list:
    return [p for p in relpath.split("/") if p not in ("", ".")]


def resolve_layout(relpaths, where: str):
    """Map image paths (posix, relative) to splits and classes.

    Returns (classes, split, label, has_test): ``split[i]`` is 1 for a training image, 2 for a test image and
    0 for a path in neither, ``label[i]`` its class index; ``has_test`` is False when the tree has no
    test folder (hold one out). Accepts train/<class>/..., test/<class>/... (optionally nested one or
    more folders deep, e.g. cifar10/train/...) or plain <class>/... . The arrays take 9 bytes a path
    and no list of split paths is kept, so this stays small for a million images.
    """
    n = len(relpaths)
    if not n:
        raise ConvslimError(f"no images found in {where}")
    # strip leading folders that every path shares (PATH/cifar10/train/... -> train/...)
    depth = 0
    while True:
        head = None
        for rp in relpaths:
            p = _parts(rp)
            h = p[depth] if len(p) > depth + 2 else None
            if h is None or (head is not None and h != head):
                head = None
                break
            head = h
        if head is None or head.lower() == "train" or head.lower() in TEST_DIRS:
            break
        depth += 1
    heads = set()
    for rp in relpaths:
        p = _parts(rp)
        if len(p) >= depth + 3:
            heads.add(p[depth].lower())
    split_layout = "train" in heads
    test_dir = next((t for t in TEST_DIRS if t in heads), None) if split_layout else None
    split = np.zeros(n, np.int8)
    label = np.full(n, -1, np.int64)
    names: dict = {}                          # class name -> provisional index, in order of appearance
    for i, rp in enumerate(relpaths):
        p = _parts(rp)[depth:]
        if split_layout:
            if len(p) < 3:
                continue
            h = p[0].lower()
            code = 1 if h == "train" else 2 if h == test_dir else 0
            name = p[1]
        else:
            if len(p) < 2:
                continue
            code, name = 1, p[0]
        if code:
            split[i] = code
            label[i] = names.setdefault(name, len(names))
    present = set(np.unique(label[split == 1]).tolist())
    train_names = {name for name, k in names.items() if k in present}
    if not train_names:
        raise ConvslimError(f"no training images found in {where} (expected train/<class>/*)" if split_layout else
                            f"no images found in class folders in {where} (expected <class>/*.jpg|png)")
    classes = sorted(train_names)
    unknown = sorted(set(names) - train_names)
    if unknown:
        raise ConvslimError(f"test classes without a train folder in {where}: {', '.join(unknown[:5])}")
    index = {c: j for j, c in enumerate(classes)}
    remap = np.array([index[name] for name in names], dtype=np.int64)     # dicts keep insertion order
    label[split > 0] = remap[label[split > 0]]
    return classes, split, label, test_dir is not None


def plan_rows(relpaths, where: str):
    """(classes, positions, labels, n_train): which paths become which rows. ``positions`` index
    ``relpaths``, training rows first, each part ordered by (class, path), so the result does not
    depend on the order of files on disk or in an archive. A tree without a test folder gives a fixed
    stratified 20% of its images (seed 0) to the test rows."""
    classes, split, label, has_test = resolve_layout(relpaths, where)

    def ordered(code):
        pos = np.array(sorted(np.flatnonzero(split == code).tolist(), key=relpaths.__getitem__), dtype=np.int64)
        return pos[np.argsort(label[pos], kind="stable")] if len(pos) else pos

    train = ordered(1)
    if not has_test:
        tr, te = stratified_split(label[train], TEST_FRACTION, TEST_SEED)
        train, test = train[tr.numpy()], train[te.numpy()]
    else:
        test = ordered(2)
        if not len(test):
            raise ConvslimError(f"the test folder in {where} holds no images")
    positions = np.concatenate([train, test])
    return classes, positions, torch.from_numpy(label[positions]), len(train)


class _Items:
    """(name, data) of the images to decode, in row order, made a slice at a time (nothing held)."""

    def __init__(self, positions, item):
        self.positions, self.item = positions, item

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, s: slice):
        return [self.item(i) for i in self.positions[s].tolist()]


def build_tree(kind, where, relpaths, item, resize, make_sink, desc) -> Built:
    """Decode a tree's images into a sink in row order. ``item(i)`` is (name, data) of
    ``relpaths[i]`` (data: a file path or an archive slice)."""
    classes, positions, labels, n_train = plan_rows(relpaths, where)   # fail fast, before decoding
    sink = make_sink(len(positions), n_train)
    decode_into(sink, _Items(positions, item), resize, desc)
    return Built(kind, classes, labels[:n_train], labels[n_train:], sink)


def scan_image_dir(root: str) -> tuple[list, list]:
    """Every image file under root as a posix path relative to it (folders and names sorted), and
    the folder's fingerprint: the number of images and a digest of every one's path, size and mtime."""
    h = hashlib.sha256()
    rels = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        prefix = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        for fn in sorted(filenames):
            if is_image(fn):
                st = os.stat(os.path.join(dirpath, fn))
                rel = prefix + fn
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
                rels.append(rel)
    return rels, [len(rels), h.hexdigest()]


def read_image_dir(kind, root, relpaths, resize, make_sink) -> Built:
    def item(i):
        return relpaths[i], os.path.join(root, relpaths[i])
    return build_tree(kind, root, relpaths, item, resize, make_sink, f"decoding {os.path.basename(root)}")
