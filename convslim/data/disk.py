"""uint8 image arrays that never sit in memory whole: written a chunk at a time, read a batch at a time.

The decode cache keeps a data set's images in a plain ``.npy`` file, uint8 (N, C, H, W). A set too
large for memory is used through `DiskImages`: indexing it reads just the rows asked for with
``pread`` (consecutive rows in one call), so the process holds one batch, not the data set, and its
resident memory stays flat however large the folder. (A ``numpy.memmap`` would not: every page it
touches counts in the process's resident set until the kernel reclaims it, and random row access
through page faults is slower than reading the rows.)

Sinks receive decoded rows in order: `FileSink` writes the ``.npy`` sequentially (with the CRC-32
of its bytes and the training rows' per-channel histogram on the way), `ArraySink` fills a
preallocated array in memory (one copy of the data, never more).
"""

from __future__ import annotations

import math
import os
import zlib

import numpy as np
import torch

READ_BYTES = 4 << 20             # rows per chunk when a whole array is streamed (checksum, statistics)


# --------------------------------------------------------------------------------------------
# the .npy format
# --------------------------------------------------------------------------------------------

def write_npy_header(f, shape) -> None:
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                             "shape": tuple(int(s) for s in shape)})


def read_npy_header(f) -> tuple[tuple, int]:
    """(shape, offset of the data) of a uint8 C-order 4-d .npy file; ValueError if it is not one."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype != np.uint8 or fortran or len(shape) != 4:
        raise ValueError(f"not a uint8 (N, C, H, W) array: {dtype} {shape}{' fortran' if fortran else ''}")
    return tuple(int(s) for s in shape), f.tell()


class _File:
    """An open .npy file of uint8 (N, C, H, W) images, read with positional reads."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            with open(self.fd, "rb", closefd=False) as f:
                self.shape, self.offset = read_npy_header(f)
            size = os.fstat(self.fd).st_size
            want = self.offset + math.prod(self.shape)
            if size != want:
                raise ValueError(f"{'truncated' if size < want else 'longer than its header says'} "
                                 f"({size} bytes, expected {want})")
        except BaseException:
            os.close(self.fd)
            raise
        self.row_bytes = math.prod(self.shape[1:])

    def readinto(self, buf: memoryview, offset: int) -> None:
        done, n = 0, len(buf)
        while done < n:
            if hasattr(os, "preadv"):
                got = os.preadv(self.fd, [buf[done:]], offset + done)
            else:                                          # no preadv (Windows): seek and read
                os.lseek(self.fd, offset + done, os.SEEK_SET)
                chunk = os.read(self.fd, n - done)
                buf[done:done + len(chunk)] = chunk
                got = len(chunk)
            if got <= 0:
                raise OSError(f"{self.path} ended early (read {done} of {n} bytes at {offset})")
            done += got

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class DiskImages:
    """uint8 (N, C, H, W) images in a .npy file, or a subset of its rows: a stand-in for a uint8
    tensor that reads only what is indexed.

    ``x[i]`` (an int) is a (C, H, W) tensor; ``x[idx]`` (a slice, a list, an index tensor or array)
    a (k, C, H, W) tensor read from the file; ``x.take(idx)`` a DiskImages of those rows (nothing
    read). ``len``, ``shape``, ``dtype``, ``device``, ``dim()`` and ``numel()`` answer as a tensor's
    do. There is deliberately no ``.to()``, ``.contiguous()`` or ``__array__``: holding the whole
    set is `materialize()`, and only on purpose.
    """

    dtype = torch.uint8
    device = torch.device("cpu")
    ndim = 4

    def __init__(self, source, rows=None):
        self._file = source if isinstance(source, _File) else _File(source)
        self._rows = None if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
        n = self._file.shape[0] if self._rows is None else len(self._rows)
        self.shape = torch.Size((n, *self._file.shape[1:]))

    # -- what a tensor would answer -------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._file.path

    def dim(self) -> int:
        return 4

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        return self.shape[0]

    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel()

    def __repr__(self) -> str:
        return f"DiskImages({self.path!r}, shape={tuple(self.shape)})"

    # -- rows ----------------------------------------------------------------------------------
    def _positions(self, idx) -> np.ndarray:
        n = len(self)
        if isinstance(idx, slice):
            return np.arange(n, dtype=np.int64)[idx]
        if isinstance(idx, torch.Tensor):
            idx = idx.detach().cpu().numpy()
        pos = np.asarray(idx)
        if pos.dtype == bool:
            if pos.shape != (n,):
                raise IndexError(f"boolean index of shape {pos.shape} for {n} rows")
            return np.flatnonzero(pos)
        if pos.size and not np.issubdtype(pos.dtype, np.integer):
            raise IndexError(f"rows must be integers, got {pos.dtype}")
        pos = pos.astype(np.int64, copy=False).reshape(-1)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        return np.where(pos < 0, pos + n, pos)

    def _file_rows(self, pos: np.ndarray) -> np.ndarray:
        return pos if self._rows is None else self._rows[pos]

    def take(self, idx) -> "DiskImages":
        """These rows as a DiskImages (in the order given); reads nothing."""
        return DiskImages(self._file, self._file_rows(self._positions(idx)))

    def read(self, file_rows: np.ndarray) -> np.ndarray:
        """Rows of the file (not of this view) as a (k, C, H, W) array; runs of consecutive rows
        are one read each, and rows are read in file order (a shuffled batch is sorted first)."""
        k = len(file_rows)
        if k > 1 and np.any(np.diff(file_rows) < 0):
            order = np.argsort(file_rows, kind="stable")
            out = np.empty((k, *self._file.shape[1:]), dtype=np.uint8)
            out[order] = self.read(file_rows[order])
            return out
        out = np.empty((k, *self._file.shape[1:]), dtype=np.uint8)
        if k == 0:
            return out
        flat = memoryview(out.reshape(-1)).cast("B")
        rb = self._file.row_bytes
        breaks = np.flatnonzero(np.diff(file_rows) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [k]))
        for s, e in zip(starts.tolist(), ends.tolist()):
            self._file.readinto(flat[s * rb:e * rb], self._file.offset + int(file_rows[s]) * rb)
        return out

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)) or (isinstance(idx, torch.Tensor) and idx.dim() == 0
                                                 and not idx.dtype.is_floating_point and idx.dtype != torch.bool):
            return torch.from_numpy(self.read(self._file_rows(self._positions([int(idx)])))[0])
        if isinstance(idx, tuple):
            raise IndexError("DiskImages takes one index (rows); index the batch it returns for more")
        return torch.from_numpy(self.read(self._file_rows(self._positions(idx))))

    def chunks(self, max_bytes: int = READ_BYTES):
        """(start, tensor) for consecutive blocks of rows, each at most ``max_bytes`` (one row at
        least): the way through the whole set that holds one block at a time."""
        step = max(1, max_bytes // max(1, self._file.row_bytes))
        for s in range(0, len(self), step):
            yield s, self[s:s + step]

    def materialize(self) -> torch.Tensor:
        """The whole set as one in-memory tensor (only for a set known to fit)."""
        out = torch.empty(self.shape, dtype=torch.uint8)
        for s, block in self.chunks():
            out[s:s + len(block)] = block
        return out

    def __getstate__(self):
        return {"path": self.path, "rows": self._rows}

    def __setstate__(self, state):
        self.__init__(state["path"], state["rows"])


def is_disk(x) -> bool:
    return isinstance(x, DiskImages)


def take_rows(x, idx):
    """Rows ``idx`` of a split: a contiguous tensor copy, or a DiskImages view (nothing read)."""
    if isinstance(x, DiskImages):
        return x.take(idx)
    return x[idx].contiguous()


def row_blocks(x, max_bytes: int = READ_BYTES):
    """(start, uint8 tensor) blocks of rows of a tensor or DiskImages, each at most ``max_bytes``."""
    if isinstance(x, DiskImages):
        yield from x.chunks(max_bytes)
        return
    step = max(1, max_bytes // max(1, math.prod(x.shape[1:])))
    for s in range(0, len(x), step):
        yield s, x[s:s + step]


def to_device(x, device) -> torch.Tensor:
    """A device copy of a whole split, moved a block at a time (host memory holds one block)."""
    device = torch.device(device)
    if not isinstance(x, DiskImages):
        return x.to(device)
    out = torch.empty(x.shape, dtype=torch.uint8, device=device)
    for s, block in x.chunks():
        out[s:s + len(block)].copy_(block)
    return out


def channel_histogram(x) -> torch.Tensor:
    """(C, 256) int64 per-channel counts of the values of uint8 (N, C, H, W) images (a tensor on
    any device, or DiskImages), a block of rows at a time."""
    c = x.shape[1]
    hist = torch.zeros(c, 256, dtype=torch.int64)
    for _, block in row_blocks(x):
        for ch in range(c):
            v = block[:, ch].reshape(-1)
            hist[ch] += torch.bincount(v.to(torch.int64) if v.device.type != "cpu" else v, minlength=256).cpu()
    return hist


def histogram_np(block: np.ndarray) -> np.ndarray:
    """(C, 256) int64 counts of a uint8 (k, C, H, W) array."""
    return np.stack([np.bincount(block[:, ch].reshape(-1), minlength=256) for ch in range(block.shape[1])]
                    ).astype(np.int64) if len(block) else np.zeros((block.shape[1], 256), np.int64)


# --------------------------------------------------------------------------------------------
# sinks: where decoded rows go, in order
# --------------------------------------------------------------------------------------------

class SinkError(OSError):
    """Writing a sink's file failed (a full disk, a vanished folder): the source itself is fine."""


class _Sink:
    """Takes ``n`` rows of uint8 (C, H, W) images in order, in blocks; the first ``n_train`` are the
    training rows, whose per-channel histogram it keeps (``hist``)."""

    def __init__(self, n: int, n_train: int):
        self.n, self.n_train, self.filled = int(n), int(n_train), 0
        self.shape = None
        self.hist = None

    def write(self, block: np.ndarray) -> None:
        """One block of rows, uint8 (k, C, H, W), C-contiguous."""
        if block.dtype != np.uint8 or block.ndim != 4:
            raise ValueError(f"expected uint8 (k, C, H, W) rows, got {block.dtype} {block.shape}")
        if self.shape is None:
            self.shape = (self.n, *block.shape[1:])
            self.hist = np.zeros((block.shape[1], 256), np.int64)
            self._start()
        elif block.shape[1:] != self.shape[1:]:
            raise ValueError(f"rows of shape {block.shape[1:]} after rows of shape {self.shape[1:]}")
        if self.filled + len(block) > self.n:
            raise ValueError(f"more than the {self.n} rows announced")
        block = np.ascontiguousarray(block)
        train = max(0, min(len(block), self.n_train - self.filled))
        if train:
            self.hist += histogram_np(block[:train])
        self._put(block)
        self.filled += len(block)

    def _check_full(self) -> None:
        if self.filled != self.n or self.shape is None:
            raise ValueError(f"{self.filled} rows written of the {self.n} announced")

    def _start(self):
        pass

    def _put(self, block):
        raise NotImplementedError


class ArraySink(_Sink):
    """Rows into one preallocated in-memory array; `finish()` gives it as a tensor."""

    def _start(self):
        self.array = np.empty(self.shape, dtype=np.uint8)

    def _put(self, block):
        self.array[self.filled:self.filled + len(block)] = block

    def finish(self) -> torch.Tensor:
        self._check_full()
        return torch.from_numpy(self.array)


class FileSink(_Sink):
    """Rows written straight to a .npy file (never mapped, never held); ``crc`` is the CRC-32 of the
    data bytes. `finish()` flushes, syncs and closes the file."""

    def __init__(self, n: int, n_train: int, path: str):
        super().__init__(n, n_train)
        self.path = path
        self.crc = 0
        try:
            self._f = open(path, "wb")
        except OSError as e:
            raise SinkError(e.errno, f"cannot write {path}: {e.strerror or e}") from None

    def _start(self):
        try:
            write_npy_header(self._f, self.shape)
        except OSError as e:
            raise SinkError(e.errno, f"cannot write {self.path}: {e.strerror or e}") from None

    def _put(self, block):
        try:
            self._f.write(memoryview(block.reshape(-1)))
        except OSError as e:
            raise SinkError(e.errno, f"cannot write {self.path}: {e.strerror or e}") from None
        self.crc = zlib.crc32(block.reshape(-1), self.crc)

    def finish(self) -> None:
        self._check_full()
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        except OSError as e:
            raise SinkError(e.errno, f"cannot write {self.path}: {e.strerror or e}") from None

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
