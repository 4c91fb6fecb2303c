"""convslim.data: sources, splits, cache, batching, sharding, augmentation and errors.

Runs on CPU in seconds with the bundled digits data and tiny synthetic fixtures (no downloads,
no /work/shared/data).
"""

import os
import pickle
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from convslim.data import BatchLoader, Splits, load_data, random_crop_flip
from convslim.data import sources
from convslim.errors import ConvslimError


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", seed=0)


def _rows(x):
    return [bytes(r.numpy().tobytes()) for r in x]


# ------------------------------------------------------------------------------------------------
# digits and splits
# ------------------------------------------------------------------------------------------------

def test_digits_shapes_classes_dtypes(digits):
    d = digits
    assert isinstance(d, Splits)
    assert d.name == "digits" and d.num_classes == 10 and d.classes == [str(i) for i in range(10)]
    assert d.input_shape == (1, 8, 8)
    assert d.augment is False
    n = len(d.train_x) + len(d.val_x) + len(d.test_x)
    assert n == 1797
    assert len(d.test_x) == pytest.approx(0.2 * 1797, abs=10)
    assert len(d.val_x) == pytest.approx(0.1 * (1797 - len(d.test_x)), abs=10)
    for x, y in [(d.train_x, d.train_y), (d.val_x, d.val_y), (d.test_x, d.test_y)]:
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1:] == (1, 8, 8) and x.is_contiguous()
        assert y.dtype == torch.int64 and len(y) == len(x)
        assert set(y.tolist()) == set(range(10))        # stratified: every class in every split
    assert int(d.train_x.max()) == 255 and int(d.train_x.min()) == 0
    assert len(d.mean) == 1 and len(d.std) == 1
    ref = d.train_x.float().div(255)
    assert d.mean[0] == pytest.approx(ref.mean().item(), abs=1e-5)
    assert d.std[0] == pytest.approx(ref.std(unbiased=False).item(), abs=1e-5)


def test_digits_splits_partition_the_data(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    full = np.round(raw.images * (255 / 16)).astype(np.uint8)
    want = Counter((bytes(img.tobytes()), int(t)) for img, t in zip(full, raw.target))
    got = Counter()
    for x, y in [(digits.train_x, digits.train_y), (digits.val_x, digits.val_y), (digits.test_x, digits.test_y)]:
        got.update(zip(_rows(x[:, 0]), y.tolist()))
    assert got == want                        # every sample in exactly one split


def test_splits_deterministic_per_seed(digits):
    again = load_data("digits", seed=0)
    other = load_data("digits", seed=1)
    assert torch.equal(again.train_x, digits.train_x) and torch.equal(again.val_y, digits.val_y)
    assert torch.equal(again.val_x, digits.val_x)
    assert not torch.equal(other.val_x, digits.val_x)          # another seed, another val split
    assert torch.equal(other.test_x, digits.test_x)             # the test split never moves
    assert set(_rows(other.val_x)) != set(_rows(digits.val_x))


def test_val_fraction_zero_and_custom():
    d = load_data("digits", val_fraction=0.0)
    assert len(d.val_x) == 0 and d.val_x.shape[1:] == (1, 8, 8)
    assert len(d.loader("val")) == 0 and list(d.loader("val")) == []
    d3 = load_data("digits", val_fraction=0.3)
    assert len(d3.val_x) == pytest.approx(0.3 * (len(d3.train_x) + len(d3.val_x)), abs=10)


# ------------------------------------------------------------------------------------------------
# loader
# ------------------------------------------------------------------------------------------------

def test_loader_batches(digits):
    d = digits
    n = len(d.train_x)
    ld = d.loader("train", batch_size=100)
    assert isinstance(ld, BatchLoader)
    assert len(ld) == -(-n // 100)
    batches = list(ld)
    assert len(batches) == len(ld)
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and len(x) == len(y)
    assert sum(len(y) for _, y in batches) == n
    allx = torch.cat([x for x, _ in batches])
    assert allx.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert allx.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(d.train_y.tolist())
    dl = d.loader("train", batch_size=100, drop_last=True)
    assert len(dl) == n // 100 and all(len(y) == 100 for _, y in dl)


def test_loader_defaults_order_and_values(digits):
    d = digits
    val = d.loader("val", batch_size=32)
    assert not val.shuffle and not val.augment
    ys = torch.cat([y for _, y in val])
    assert torch.equal(ys, d.val_y)                             # no shuffle: split order
    x0, _ = next(iter(val))
    expect = (d.val_x[:32].float() / 255 - d.mean[0]) / d.std[0]
    assert torch.allclose(x0, expect, atol=1e-5)
    assert torch.allclose(d.normalize(d.val_x[:32]), expect, atol=1e-5)
    tr = d.loader("train")
    assert tr.shuffle and tr.augment is False                  # digits: no augmentation by default


def test_set_epoch_reshuffles_deterministically(digits):
    ld = digits.loader("train", batch_size=64)
    ld.set_epoch(0)
    e0 = torch.cat([y for _, y in ld])
    e0_again = torch.cat([y for _, y in ld])
    ld.set_epoch(1)
    e1 = torch.cat([y for _, y in ld])
    assert torch.equal(e0, e0_again)
    assert not torch.equal(ld.indices(), digits.loader("train", batch_size=64).indices())
    assert not torch.equal(e0, e1)
    other = digits.loader("train", batch_size=64)
    other.set_epoch(1)
    assert torch.equal(torch.cat([y for _, y in other]), e1)
    assert sorted(e0.tolist()) == sorted(e1.tolist())


def _index_loader(n, **kw):
    """A loader whose labels are the sample indices (images encode them too)."""
    x = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return BatchLoader(x, torch.arange(n), (0.0,), (1.0,), **kw)


@pytest.mark.parametrize("n", [100, 101, 7])
def test_two_rank_sharding_covers_epoch(n):
    loaders = [_index_loader(n, batch_size=8, shuffle=True, seed=3, rank=r, world_size=2) for r in range(2)]
    for ld in loaders:
        ld.set_epoch(5)
    assert len(loaders[0]) == len(loaders[1])
    seen = [torch.cat([y for _, y in ld]) for ld in loaders]
    assert len(seen[0]) == len(seen[1]) == -(-n // 2)
    union = torch.cat(seen)
    assert set(union.tolist()) == set(range(n))
    assert len(union) - n == (-n) % 2                           # padding repeats at most world_size-1
    assert not set(seen[0].tolist()) & set(seen[1].tolist()) or n % 2
    # the shards come from the same permutation as a single-process loader
    single = _index_loader(n, batch_size=8, shuffle=True, seed=3)
    single.set_epoch(5)
    order = single.indices()
    assert torch.equal(seen[0][: n // 2], order[0:n:2][: n // 2])


def test_limit_is_a_fixed_subset():
    ld = _index_loader(50, batch_size=4, shuffle=True, limit=10)
    assert ld.num_images == 10 and len(ld) == 3
    ld.set_epoch(0)
    a = torch.cat([y for _, y in ld])
    ld.set_epoch(1)
    b = torch.cat([y for _, y in ld])
    assert len(a) == 10 and set(a.tolist()) == set(b.tolist())
    assert _index_loader(50, limit=100).num_images == 50


def test_channels_last_and_calibration(digits):
    x, _ = next(iter(digits.loader("train", 16, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)
    c = digits.calibration(20, seed=1)
    assert c.shape == (20, 1, 8, 8) and c.dtype == torch.float32
    assert torch.equal(c, digits.calibration(20, seed=1))
    assert not torch.equal(c, digits.calibration(20, seed=2))
    assert len(digits.calibration(10**6)) == len(digits.train_x)


def test_augmented_loader_runs_and_differs_by_epoch(digits):
    ld = digits.loader("train", 64, augment=True, shuffle=False)
    ld.set_epoch(0)
    a, _ = next(iter(ld))
    b, _ = next(iter(ld))
    ld.set_epoch(1)
    c, _ = next(iter(ld))
    assert a.shape == (64, 1, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain, _ = next(iter(digits.loader("train", 64, shuffle=False)))
    assert not torch.equal(a, plain)


# ------------------------------------------------------------------------------------------------
# augmentation
# ------------------------------------------------------------------------------------------------

def test_augment_identity_without_pad_or_flip():
    x = torch.randint(0, 256, (5, 3, 6, 7), dtype=torch.uint8)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), 0, flip=False)
    assert torch.equal(out, x)


def test_augment_flip_only():
    x = torch.randint(0, 256, (64, 3, 5, 6), dtype=torch.uint8)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), 0)
    assert out.shape == x.shape and out.dtype == torch.uint8
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 10 < int(flipped.sum()) < 54 and 10 < int(same.sum()) < 54


def test_augment_crop_moves_a_known_pattern():
    h = w = 16
    pad = 2
    x = torch.zeros(200, 1, h, w, dtype=torch.uint8)
    x[:, 0, 5, 9] = 255                                          # one bright pixel at (5, 9)
    g = torch.Generator().manual_seed(1)
    out = random_crop_flip(x, g, pad, flip=False)
    assert out.shape == x.shape and out.dtype == torch.uint8
    shifts = set()
    for img in out[:, 0]:
        pos = torch.nonzero(img == 255)
        assert len(pos) == 1 and int(img.sum()) == 255          # zero padding: nothing else appears
        dy, dx = int(pos[0, 0]) - 5, int(pos[0, 1]) - 9
        assert -pad <= dy <= pad and -pad <= dx <= pad
        shifts.add((dy, dx))
    assert len(shifts) == (2 * pad + 1) ** 2                     # every offset shows up

    # flip on: the pixel lands at the mirrored column (w - 1 - 9) shifted by at most pad
    out = random_crop_flip(x, torch.Generator().manual_seed(2), pad)
    cols = {int(torch.nonzero(img == 255)[0, 1]) for img in out[:, 0]}
    assert cols & set(range(9 - pad, 9 + pad + 1)) and cols & set(range(w - 10 - pad, w - 10 + pad + 1))


def test_augment_crop_is_exact_shift_with_zero_fill():
    x = torch.randint(1, 256, (40, 3, 8, 8), dtype=torch.uint8)
    pad = 3
    out = random_crop_flip(x, torch.Generator().manual_seed(3), pad, flip=False)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    for i in range(len(x)):
        assert any(torch.equal(out[i], padded[i, :, oy:oy + 8, ox:ox + 8])
                   for oy in range(2 * pad + 1) for ox in range(2 * pad + 1))
    assert (out == 0).any()                                      # some borders came from the padding


def test_augment_deterministic_given_generator():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    a = random_crop_flip(x, torch.Generator().manual_seed(7), 1)
    b = random_crop_flip(x, torch.Generator().manual_seed(7), 1)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# synthetic fixtures: image folders, tarballs, CIFAR pickles
# ------------------------------------------------------------------------------------------------

def _img(seed, size=(8, 8)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _make_tree(root, counts=None, size=(8, 8)):
    counts = counts or {"train": {"cat": 4, "dog": 6}, "test": {"cat": 2, "dog": 3}}
    k = 0
    for split, per in counts.items():
        for cls, n in per.items():
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _img(k, size).save(folder / f"{i:03d}.png")
                k += 1
    return root


def _tar(src, dest, arcname=""):
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src, arcname=arcname or os.path.basename(src))
    return dest


@pytest.fixture
def tree(tmp_path):
    return _make_tree(tmp_path / "pics")


def test_imagefolder_tree_loads_and_caches(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    d = load_data(f"imagefolder:{tree}", val_fraction=0.0, cache_dir=str(cache))
    assert d.classes == ["cat", "dog"] and d.num_classes == 2 and d.augment
    assert len(d.train_x) == 10 and len(d.test_x) == 5 and d.input_shape == (3, 8, 8)
    assert d.train_y.tolist() == [0] * 4 + [1] * 6 and d.test_y.tolist() == [0, 0, 1, 1, 1]
    first = np.asarray(Image.open(tree / "train" / "cat" / "000.png")).transpose(2, 0, 1)
    assert np.array_equal(d.train_x[0].numpy(), first)
    assert len(list(cache.glob("*.pt"))) == 1 and not list(cache.glob(".tmp-*"))

    def boom(*a, **k):
        raise AssertionError("decoded again instead of using the cache")
    monkeypatch.setattr(sources.decode, "decode_image", boom)
    again = load_data(f"imagefolder:{tree}", val_fraction=0.0, cache_dir=str(cache))
    assert torch.equal(again.train_x, d.train_x) and torch.equal(again.test_y, d.test_y)
    monkeypatch.undo()

    # a changed source is decoded again
    _img(99).save(tree / "train" / "dog" / "new.png")
    more = load_data(f"imagefolder:{tree}", val_fraction=0.0, cache_dir=str(cache))
    assert len(more.train_x) == 11


def _cache_file(cache):
    (path,) = cache.glob("*.pt")
    return path


def _flip_image_byte(path):
    """Damage one byte inside the stored image tensor (the largest record of the torch zip)."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def _one_note(err, why):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "data cache" in lines[0] and why in lines[0] and "rebuilding" in lines[0], err
    assert "Traceback" not in err


def test_a_cache_that_fails_its_check_is_rebuilt_with_a_note(tree, tmp_path, capsys):
    """Damaged image bytes, damaged labels, a valid cache of another data set in its place, a
    truncated file: each is rebuilt from the source with one line on stderr, never used, never fatal."""
    cache = tmp_path / "cache"
    spec = f"imagefolder:{tree}"
    good = load_data(spec, val_fraction=0.0, cache_dir=str(cache))
    path = _cache_file(cache)
    assert capsys.readouterr().err == ""

    def reload(why):
        d = load_data(spec, val_fraction=0.0, cache_dir=str(cache))
        _one_note(capsys.readouterr().err, why)
        assert torch.equal(d.train_x, good.train_x) and torch.equal(d.train_y, good.train_y)
        assert torch.equal(d.test_x, good.test_x) and torch.equal(d.test_y, good.test_y)
        again = load_data(spec, val_fraction=0.0, cache_dir=str(cache))     # the rebuilt cache is sound
        assert capsys.readouterr().err == "" and torch.equal(again.train_x, good.train_x)

    _flip_image_byte(path)
    reload("checksum")

    stored = torch.load(path, weights_only=True)
    stored["train_y"] = stored["train_y"].clone()
    stored["train_y"][0] = 99                                 # a label no class has, checksum now stale
    torch.save(stored, path)
    reload("checksum")

    other = _make_tree(tmp_path / "other", {"train": {"ant": 3, "bee": 3}, "test": {"ant": 1, "bee": 1}})
    load_data(f"imagefolder:{other}", val_fraction=0.0, cache_dir=str(tmp_path / "cache2"))
    _cache_file(tmp_path / "cache2").replace(path)           # a valid cache, of another data set
    reload("another source")

    path.write_bytes(path.read_bytes()[:200])
    reload("unreadable")


def test_imagefolder_val_split_and_nested(tree, tmp_path):
    d = load_data(f"imagefolder:{tree}", val_fraction=0.5, cache_dir=False)
    assert len(d.train_x) + len(d.val_x) == 10 and len(d.val_x) == 5
    nested = tmp_path / "outer"
    nested.mkdir()
    os.rename(tree, nested / "inner")
    n = load_data(f"cifar10:{nested}", val_fraction=0.0, cache_dir=str(tmp_path / "c"))
    assert len(n.train_x) == 10 and len(n.test_x) == 5 and n.classes == ["cat", "dog"]


def test_class_per_folder_holds_out_test(tmp_path):
    root = _make_tree(tmp_path / "flat", {"": {"a": 10, "b": 15}})
    d = load_data(f"imagefolder:{root}", val_fraction=0.0, cache_dir=False)
    assert d.classes == ["a", "b"]
    assert len(d.test_x) == 5 and d.test_y.tolist() == [0, 0, 1, 1, 1]
    assert len(d.train_x) == 20


def test_resize_and_mixed_sizes(tmp_path):
    root = _make_tree(tmp_path / "mixed", {"train": {"a": 2}, "test": {"a": 1}})
    _img(50, (12, 10)).save(root / "train" / "a" / "odd.png")
    with pytest.raises(ConvslimError, match="resize"):
        load_data(f"imagefolder:{root}", cache_dir=False)
    d = load_data(f"imagefolder:{root}", resize=6, val_fraction=0.0, cache_dir=False)
    assert d.input_shape == (3, 6, 6) and len(d.train_x) == 3


def test_grayscale_images_become_rgb(tmp_path):
    root = tmp_path / "gray"
    for split, n in (("train", 3), ("test", 1)):
        (root / split / "x").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((5, 5), 40 * i, np.uint8), "L").save(root / split / "x" / f"{i}.png")
    d = load_data(f"imagefolder:{root}", val_fraction=0.0, cache_dir=False)
    assert d.input_shape == (3, 5, 5) and len(d.mean) == 3


def test_tarball_loads_like_the_folder_and_caches(tree, tmp_path, monkeypatch):
    folder = load_data(f"imagefolder:{tree}", val_fraction=0.0, cache_dir=False)
    tgz = _tar(tree, tmp_path / "pics.tar.gz", arcname="cifarish")  # nested one level: cifarish/train/...
    cache = tmp_path / "cache"
    d = load_data(f"cifar10:{tgz}", val_fraction=0.0, cache_dir=str(cache))
    assert d.name == "cifar10" and d.classes == ["cat", "dog"]
    assert torch.equal(d.train_x, folder.train_x) and torch.equal(d.test_x, folder.test_x)
    assert torch.equal(d.train_y, folder.train_y)

    monkeypatch.setattr(sources.decode, "decode_image", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    monkeypatch.setattr(sources.archive, "_read_archive_bytes", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    again = load_data(f"cifar10:{tgz}", val_fraction=0.0, cache_dir=str(cache))
    assert torch.equal(again.train_x, d.train_x)


def test_tarball_without_nesting(tree, tmp_path):
    tgz = tmp_path / "flat.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(tree / split, arcname=split)
    d = load_data(f"imagefolder:{tgz}", val_fraction=0.0, cache_dir=False)
    assert len(d.train_x) == 10 and len(d.test_x) == 5


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _fake_cifar10(root, per_batch=4):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        _write_pickle(root / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                    b"filenames": [b"x.png"] * per_batch})
    _write_pickle(root / "batches.meta", {b"label_names": [n.encode() for n in sources.CIFAR10_CLASSES],
                                          b"num_cases_per_batch": per_batch})
    return root


def test_cifar10_pickle_folder_loads_and_caches(tmp_path, monkeypatch):
    root = _fake_cifar10(tmp_path / "cifar-10-batches-py")
    cache = tmp_path / "cache"
    d = load_data(f"cifar10:{root}", val_fraction=0.0, cache_dir=str(cache))
    assert d.name == "cifar10" and d.classes == sources.CIFAR10_CLASSES and d.num_classes == 10
    assert len(d.train_x) == 20 and len(d.test_x) == 4 and d.input_shape == (3, 32, 32)
    with open(root / "data_batch_1", "rb") as f:
        b1 = pickle.load(f, encoding="bytes")
    assert np.array_equal(d.train_x[0].numpy().reshape(-1), b1[b"data"][0])
    assert d.train_y[:4].tolist() == b1[b"labels"]

    monkeypatch.setattr(sources.cifar, "_unpickle", lambda *a, **k: (_ for _ in ()).throw(AssertionError("unpickled")))
    again = load_data(f"cifar10:{tmp_path}", val_fraction=0.0, cache_dir=str(cache))  # parent folder works too
    assert len(again.train_x) == 20
    again2 = load_data(f"cifar10:{root}", val_fraction=0.0, cache_dir=str(cache))
    assert torch.equal(again2.train_x, d.train_x)


def test_cifar100_pickles_and_official_tarball(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 3)):
        _write_pickle(root / name, {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                    b"fine_labels": list(range(n)), b"coarse_labels": [0] * n})
    _write_pickle(root / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    d = load_data(f"cifar100:{root}", val_fraction=0.0, cache_dir=False)
    assert d.num_classes == 100 and d.classes[:2] == ["c0", "c1"]
    assert len(d.train_x) == 6 and d.test_y.tolist() == [0, 1, 2]
    tgz = _tar(root, tmp_path / "cifar-100-python.tar.gz")
    t = load_data(f"cifar100:{tgz}", val_fraction=0.0, cache_dir=False)
    assert torch.equal(t.train_x, d.train_x) and torch.equal(t.test_y, d.test_y)


def test_pickle_with_foreign_objects_is_refused(tmp_path):
    root = _fake_cifar10(tmp_path / "c10")
    _write_pickle(root / "test_batch", {b"data": Counter(), b"labels": []})
    with pytest.raises(ConvslimError, match="test_batch"):
        load_data(f"cifar10:{root}", cache_dir=False)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------

def test_error_unknown_kind():
    with pytest.raises(ConvslimError, match="unknown data kind.*digits.*cifar10.*imagefolder"):
        load_data("mnist:/tmp/x")


def test_error_missing_path(tmp_path):
    with pytest.raises(ConvslimError, match="not found"):
        load_data(f"imagefolder:{tmp_path / 'nope'}", cache_dir=False)
    with pytest.raises(ConvslimError, match="needs a path"):
        load_data("imagefolder")
    with pytest.raises(ConvslimError, match="needs a path"):
        load_data("cifar10:")                                   # plain 'cifar10' downloads (see below)


def test_error_empty_folder(tmp_path):
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(ConvslimError, match="no images"):
        load_data(f"imagefolder:{tmp_path / 'empty'}", cache_dir=False)
    with pytest.raises(ConvslimError, match="no images"):
        load_data(f"cifar10:{tmp_path / 'empty'}", cache_dir=False)


def test_error_not_a_tarball(tmp_path):
    bad = tmp_path / "data.tar.gz"
    bad.write_bytes(b"this is not an archive at all" * 10)
    with pytest.raises(ConvslimError, match="tar"):
        load_data(f"cifar10:{bad}", cache_dir=False)
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(ConvslimError, match="no images"):
        load_data(f"imagefolder:{empty}", cache_dir=False)


def test_error_cifar_folder_missing_batches(tmp_path):
    root = _fake_cifar10(tmp_path / "c10")
    os.remove(root / "data_batch_3")
    os.remove(root / "test_batch")
    with pytest.raises(ConvslimError, match="missing.*data_batch_3.*test_batch"):
        load_data(f"cifar10:{root}", cache_dir=False)


@pytest.mark.parametrize("vf", [1.0, -0.1, 1.5, "x"])
def test_error_val_fraction(vf):
    with pytest.raises(ConvslimError, match="val_fraction"):
        load_data("digits", val_fraction=vf)


def test_error_unreadable_image_names_file(tree, tmp_path):
    (tree / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ConvslimError, match="broken.png"):
        load_data(f"imagefolder:{tree}", cache_dir=False)
    tgz = _tar(tree, tmp_path / "b.tar.gz")
    with pytest.raises(ConvslimError, match="broken.png"):
        load_data(f"imagefolder:{tgz}", cache_dir=False)


def test_error_bad_resize_and_split(digits):
    with pytest.raises(ConvslimError, match="resize"):
        load_data("digits", resize=0)
    with pytest.raises(ConvslimError, match="split"):
        digits.loader("holdout")


# ------------------------------------------------------------------------------------------------
# large sets: images read a batch at a time from the cache file (DiskImages)
# ------------------------------------------------------------------------------------------------

def _disk_images(tmp_path, x, n_train=None):
    from convslim.data.disk import DiskImages, FileSink

    sink = FileSink(len(x), len(x) if n_train is None else n_train, str(tmp_path / "rows.npy"))
    for s in range(0, len(x), 3):
        sink.write(x[s:s + 3].numpy())
    sink.finish()
    return DiskImages(str(tmp_path / "rows.npy")), sink


def test_disk_images_index_like_a_tensor(tmp_path):
    import pickle as pkl

    x = torch.randint(0, 256, (11, 3, 4, 5), dtype=torch.uint8)
    d, sink = _disk_images(tmp_path, x, n_train=7)
    assert np.array_equal(np.load(tmp_path / "rows.npy"), x.numpy())          # a plain .npy
    assert sink.hist.sum() == 7 * 3 * 4 * 5 and np.array_equal(sink.hist[1], np.bincount(x[:7, 1].reshape(-1), minlength=256))
    assert len(d) == 11 and d.shape == x.shape and d.dtype == torch.uint8 and d.dim() == 4 and d.numel() == x.numel()
    assert torch.equal(d[3], x[3]) and torch.equal(d[-1], x[-1]) and torch.equal(d[torch.tensor(2)], x[2])
    assert torch.equal(d[2:9:3], x[2:9:3]) and torch.equal(d[:], x)
    idx = torch.tensor([9, 0, 4, 5, 6, 0])                                  # any order, repeats, runs
    assert torch.equal(d[idx], x[idx]) and torch.equal(d[idx.numpy()], x[idx]) and torch.equal(d[[1, 2]], x[[1, 2]])
    mask = torch.arange(11) % 2 == 0
    assert torch.equal(d[mask], x[mask])
    view = d.take(torch.tensor([10, 2, 5, 7]))                               # a view: rows of rows
    assert len(view) == 4 and torch.equal(view[:], x[[10, 2, 5, 7]]) and torch.equal(view.take([3, 0])[:], x[[7, 10]])
    assert torch.equal(view.materialize(), x[[10, 2, 5, 7]])
    assert torch.equal(pkl.loads(pkl.dumps(view))[:], view[:])
    assert torch.equal(d[torch.zeros(0, dtype=torch.long)], x[:0])
    for bad in (11, -12, [3, 11]):
        with pytest.raises(IndexError):
            d[bad]
    assert not hasattr(d, "to") and not hasattr(d, "contiguous") and not hasattr(d, "__array__")


def test_streamed_splits_match_in_memory(tree, tmp_path, monkeypatch):
    """in_memory=False reads batches from the cache file and gives what in_memory=True gives, without
    ever holding a whole split (materialize is the only way to, and nothing may call it)."""
    from convslim.data import DiskImages, channel_stats

    cache = str(tmp_path / "cache")
    spec = f"imagefolder:{tree}"
    mem = load_data(spec, val_fraction=0.2, cache_dir=cache, in_memory=True)
    monkeypatch.setattr(DiskImages, "materialize", lambda self: pytest.fail("a whole split was read"))
    monkeypatch.setattr(sources.decode, "decode_image", lambda *a, **k: pytest.fail("decoded again"))
    disk = load_data(spec, val_fraction=0.2, cache_dir=cache, in_memory=False)
    assert disk.on_disk and not mem.on_disk and disk.input_shape == mem.input_shape == (3, 8, 8)
    for split in ("train", "val", "test"):
        (x, y), (mx, my) = disk.tensors(split), mem.tensors(split)
        assert isinstance(x, DiskImages) and x.shape == mx.shape
        assert torch.equal(x[torch.arange(len(x))], mx) and torch.equal(y, my)
    assert disk.mean == mem.mean == channel_stats(mem.train_x)[0] and disk.std == mem.std
    for kw in ({}, {"shuffle": False, "augment": False}, {"rank": 1, "world_size": 2}, {"limit": 3}):
        a, b = list(disk.loader("train", 3, seed=1, **kw)), list(mem.loader("train", 3, seed=1, **kw))
        assert len(a) == len(b) and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert torch.equal(disk.calibration(5, seed=3), mem.calibration(5, seed=3))
    assert torch.equal(torch.cat([x for x, _ in disk.loader("test", 4)]), torch.cat([x for x, _ in mem.loader("test", 4)]))


def test_on_disk_loader_on_a_device(tree, tmp_path, device):
    """A device copy of a split on disk is made a block at a time and gives the CPU's batches."""
    d = load_data(f"imagefolder:{tree}", val_fraction=0.0, cache_dir=str(tmp_path / "c"), in_memory=False)
    cpu = list(d.loader("train", 4, seed=2))
    dev = list(d.loader("train", 4, seed=2, device=device))
    assert all(torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu()) for a, b in zip(cpu, dev))
    assert dev[0][0].device.type == device


def test_in_memory_decided_by_size(tree, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    spec = f"imagefolder:{tree}"
    assert not load_data(spec, cache_dir=cache).on_disk                  # 15 tiny images: in memory
    monkeypatch.setenv("CONVSLIM_IN_MEMORY_MAX", "100")                   # bytes: a larger set streams
    assert load_data(spec, cache_dir=cache).on_disk
    monkeypatch.setenv("CONVSLIM_IN_MEMORY_MAX", "1.5M")
    assert not load_data(spec, cache_dir=cache).on_disk
    assert not load_data(spec, cache_dir=False, in_memory=False).on_disk  # no cache: nothing to read from
    monkeypatch.setenv("CONVSLIM_IN_MEMORY_MAX", "lots")
    with pytest.raises(ConvslimError, match="CONVSLIM_IN_MEMORY_MAX"):
        load_data(spec, cache_dir=cache)


def test_damaged_image_file_of_the_cache_is_rebuilt(tree, tmp_path, capsys):
    cache = tmp_path / "cache"
    spec = f"imagefolder:{tree}"
    good = load_data(spec, val_fraction=0.0, cache_dir=str(cache), in_memory=True)   # not read from the file
    npy = _cache_file(cache).with_suffix(".npy")
    assert capsys.readouterr().err == ""

    def reload(why, in_memory):
        d = load_data(spec, val_fraction=0.0, cache_dir=str(cache), in_memory=in_memory)
        _one_note(capsys.readouterr().err, why)
        assert torch.equal(d.train_x[:], good.train_x[:]) and torch.equal(d.test_x[:], good.test_x[:])
        load_data(spec, val_fraction=0.0, cache_dir=str(cache))
        assert capsys.readouterr().err == ""

    data = bytearray(npy.read_bytes())
    data[-7] ^= 0xFF                                                      # one pixel
    npy.write_bytes(bytes(data))
    reload("checksum", False)
    data = bytearray(npy.read_bytes())
    data[len(data) // 2] ^= 0x01
    npy.write_bytes(bytes(data))
    reload("checksum", True)
    npy.write_bytes(npy.read_bytes()[:-10])
    reload("truncated", False)
    npy.unlink()
    reload("missing", True)
    assert not list(cache.glob(".tmp-*"))


def test_a_cache_that_cannot_be_written_costs_speed_not_correctness(tree, tmp_path, monkeypatch, capsys):
    from convslim.data import disk

    def full(self, block):
        raise disk.SinkError(28, "No space left on device")
    monkeypatch.setattr(disk.FileSink, "_put", full)
    cache = tmp_path / "cache"
    d = load_data(f"imagefolder:{tree}", val_fraction=0.0, cache_dir=str(cache))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not write data cache" in err[0] and "No space" in err[0]
    assert len(d.train_x) == 10 and not d.on_disk and list(cache.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# --mean / --std
# ------------------------------------------------------------------------------------------------

def test_given_normalization_is_used(digits):
    d = load_data("digits", mean=[0.25], std=(0.5,))
    assert d.mean == (0.25,) and d.std == (0.5,)
    assert torch.equal(d.train_x, digits.train_x)
    x, _ = next(iter(d.loader("val", 16)))
    assert torch.allclose(x, (d.val_x[:16].float() / 255 - 0.25) / 0.5, atol=1e-6)
    only_std = load_data("digits", std="0.2")
    assert only_std.mean == digits.mean and only_std.std == (0.2,)
    assert digits.with_normalization(mean=[0.1]).mean == (0.1,) and digits.with_normalization(mean=[0.1]).std == digits.std


@pytest.mark.parametrize("mean,std,message", [
    ([0.1, 0.2], None, "mean has 2 values but the images have 1 channel"),
    (None, [0.1, 0.2, 0.3], "std has 3 values"),
    (None, [0.0], "std must be positive"),
    (None, [-1], "std must be positive"),
    ([120.0], None, "0..255"),
    (["x"], None, "numbers"),
    ([float("nan")], None, "finite"),
])
def test_bad_normalization_is_one_line(mean, std, message):
    with pytest.raises(ConvslimError, match=message) as e:
        load_data("digits", mean=mean, std=std)
    assert "\n" not in str(e.value)


def test_cli_mean_std(tmp_path, capsys):
    from convslim.cli import main

    out = tmp_path / "m.pt"
    assert main(["train", "--model", "digitsnet", "--data", "digits", "--epochs", "0", "--quiet",
                 "--mean", "0.3", "--std", "0.4", "--out", str(out)]) == 0
    from convslim.binding import data_for
    from convslim.checkpoint import load
    model = load(str(out))
    assert data_for(model, "digits").mean == (0.3,)                    # recorded with the model
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--mean", "0.5", "--std", "0.5"]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--data", "digits", "--std", "0,1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "std has 2 values" in err[0], err


# ------------------------------------------------------------------------------------------------
# cifar10 / cifar100 without a path: the official archive, downloaded and checked
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def http_folder(tmp_path):
    """A folder served over HTTP on 127.0.0.1 (a free port) by a thread that stops by itself."""
    import functools
    import http.server
    import threading
    import time

    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    server.timeout = 0.1
    stop, deadline = threading.Event(), time.monotonic() + 60

    def serve():
        while not stop.is_set() and time.monotonic() < deadline:
            server.handle_request()
        server.server_close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}/files"
    finally:
        stop.set()
        thread.join(5)


def test_cifar10_is_downloaded_checked_and_loaded(tmp_path, http_folder, monkeypatch, capsys):
    import hashlib

    from convslim.cli import main
    from convslim.data.sources import download

    www, url = http_folder
    (www / "files").mkdir()
    root = _fake_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    archive = _tar(root, www / "files" / "cifar-10-python.tar.gz").read_bytes()
    monkeypatch.setenv("CONVSLIM_DATA_URL", url)
    monkeypatch.setitem(download.MD5, "cifar-10-python.tar.gz", hashlib.md5(archive).hexdigest())
    cache = tmp_path / "cache"

    d = load_data("cifar10", val_fraction=0.0, cache_dir=str(cache))
    assert d.classes == sources.CIFAR10_CLASSES and len(d.train_x) == 20 and len(d.test_x) == 4
    folder = load_data(f"cifar10:{root}", val_fraction=0.0, cache_dir=False)
    assert torch.equal(d.train_x, folder.train_x) and torch.equal(d.test_y, folder.test_y)
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == archive and not list(cache.glob(".tmp-*"))
    assert capsys.readouterr().err == ""
    (www / "files" / "cifar-10-python.tar.gz").unlink()                   # the archive there is reused
    assert torch.equal(load_data("cifar10", val_fraction=0.0, cache_dir=str(cache)).train_x, d.train_x)

    damaged = bytearray(archive)
    damaged[len(damaged) // 2] ^= 0xFF
    (www / "files" / "cifar-10-python.tar.gz").write_bytes(bytes(damaged))
    other = tmp_path / "other"
    with pytest.raises(ConvslimError, match="MD5") as e:
        load_data("cifar10", cache_dir=str(other))
    assert "\n" not in str(e.value) and "nothing was kept" in str(e.value)
    assert list(other.iterdir()) == []                                    # no archive, no temporary file

    monkeypatch.setenv("CONVSLIM_CACHE", str(other))                      # the command line: one line
    assert main(["train", "--model", "digitsnet", "--data", "cifar10", "--epochs", "0", "--quiet",
                 "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MD5" in err[0] and list(other.iterdir()) == [] and not (tmp_path / "o.pt").exists()

    monkeypatch.setenv("CONVSLIM_DATA_URL", url + "/nowhere")
    with pytest.raises(ConvslimError, match="cannot download .*404") as e:
        load_data("cifar10", cache_dir=str(other))
    assert "\n" not in str(e.value) and list(other.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# --data file.py:factory
# ------------------------------------------------------------------------------------------------

FACTORY = '''
import numpy as np
import torch
from sklearn.datasets import load_digits

def _digits():
    d = load_digits()
    return np.round(d.images * (255 / 16)).astype(np.uint8)[:, None], d.target

def make(seed=0):
    x, y = _digits()
    return {"train": (x[:1200], y[:1200]), "test": (x[1200:], y[1200:]), "classes": [f"d{i}" for i in range(10)]}

def datasets():
    x, y = _digits()
    f = torch.from_numpy(x).float() / 255
    ds = torch.utils.data.TensorDataset
    return ds(f[:1000], torch.from_numpy(y[:1000])), ds(f[1000:1200], torch.from_numpy(y[1000:1200])), \\
        torch.utils.data.DataLoader(ds(f[1200:], torch.from_numpy(y[1200:])), batch_size=7)

def normalised():
    x, y = _digits()
    return (torch.from_numpy(x).float() - 0.5, y), (torch.from_numpy(x).float(), y)

def broken():
    return 42
'''


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "mydata.py"
    path.write_text(FACTORY)
    return path


def test_factory_data(factory_file, digits):
    d = load_data(f"{factory_file}:make", seed=1)
    assert isinstance(d, Splits) and d.classes == [f"d{i}" for i in range(10)] and d.input_shape == (1, 8, 8)
    assert len(d.train_x) + len(d.val_x) == 1200 and len(d.val_x) == pytest.approx(120, abs=5)
    assert len(d.test_x) == 597 and d.augment and d.source == f"{factory_file}:make"
    assert d.mean == pytest.approx((d.train_x.float().div(255).mean().item(),), abs=1e-6)
    t = load_data(f"{factory_file}:datasets", mean=[0.5], std=[0.5])
    assert len(t.train_x) == 1000 and len(t.val_x) == 200 and len(t.test_x) == 597
    assert t.classes == [str(i) for i in range(10)] and t.mean == (0.5,)
    x, _ = _digits_uint8()
    assert torch.equal(t.train_x, torch.from_numpy(x[:1000])) and torch.equal(t.test_x, torch.from_numpy(x[1200:]))
    for name, message in (("broken", "returned int"), ("nothing", "no callable"), ("normalised", "--mean/--std")):
        with pytest.raises(ConvslimError, match=message) as e:
            load_data(f"{factory_file}:{name}")
        assert "\n" not in str(e.value)
    with pytest.raises(ConvslimError, match="not found"):
        load_data(f"{factory_file.parent / 'none.py'}:make")


def _digits_uint8():
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * (255 / 16)).astype(np.uint8)[:, None], d.target


def test_factory_data_on_the_command_line(factory_file, tmp_path, capsys):
    from convslim.cli import main

    spec = f"{factory_file}:make"
    model = tmp_path / "m.pt"
    assert main(["train", "--model", "digitsnet", "--data", spec, "--epochs", "1", "--lr", "0.05", "--quiet",
                 "--out", str(model)]) == 0
    assert main(["eval", "--model", str(model)]) == 0                      # the data the model records
    assert "top-1" in capsys.readouterr().out
    assert main(["prune", "--model", str(model), "--data", spec, "--ratio", "0.3", "--out",
                 str(tmp_path / "p.pt")]) == 0
    assert main(["auto", "--model", str(model), "--data", spec, "--search", "thesis", "--min-interval", "0.5", "--probe-epochs", "0",
                 "--final-epochs", "0", "--max-acc-loss", "50", "--out", str(tmp_path / "a.pt")]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data", f"{factory_file}:broken"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "returned int" in err[0]
