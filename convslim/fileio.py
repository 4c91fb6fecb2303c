"""Writing outputs so that a failure never leaves a half-written, clobbered or unreadable file.

Every command states what it reads and writes; `check_paths` refuses any collision among them
(after resolving links) and any output it could not write, before the work starts. `atomic_path`
writes beside the target, fsyncs, gives the file the user's umask (not mkstemp's 0600) and moves
it into place; an interrupted write (Ctrl-C, SIGTERM) leaves nothing, and temporaries left by a
killed process are removed by the next write to the same path.
"""
import contextlib
import os
import tempfile
from pathlib import Path

from .errors import ConvslimError

TMP_TAG = ".convslim-"


def _same(a, b):
    return Path(a).resolve() == Path(b).resolve()


def _check_writable_folder(folder, what):
    folder = Path(folder)
    if not folder.exists():
        raise ConvslimError(f"output folder {folder} does not exist (for {what})")
    if not folder.is_dir():
        raise ConvslimError(f"{folder} is not a folder (for {what})")
    try:  # a real probe: os.access says yes to root on read-only file systems
        fd, probe = tempfile.mkstemp(prefix=f"{TMP_TAG}probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConvslimError(f"cannot write to {folder} (for {what}): {exc.strerror}") from None


def check_output_path(path, *, inputs=()):
    """One output checked alone: not an input, not a folder, in a folder we can write."""
    check_paths(reads=inputs, writes=[path])
    return Path(path)


def check_paths(reads=(), writes=(), folders=()):
    """Refuse before any work: an output that is also an input or another output (links resolved),
    an output that is an existing folder, or a target folder that is missing or not writable.
    `writes` are files; `folders` are output folders (reports), created if missing."""
    reads = [Path(p) for p in reads if p]
    writes = [Path(p) for p in writes if p]
    folders = [Path(p) for p in folders if p]
    seen = []
    for out in writes + folders:
        for src in reads:
            if _same(out, src):
                raise ConvslimError(f"output {out} is also an input ({src}); choose another path")
        for other in seen:
            if _same(out, other):
                raise ConvslimError(f"{out} is given as two outputs; give each output its own path")
        seen.append(out)
    for out in writes:
        if out.is_dir():
            raise ConvslimError(f"output {out} is a folder, expected a file path")
        _check_writable_folder(out.parent, out.name)
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise ConvslimError(f"report path {folder} exists and is not a folder")
        _check_writable_folder(folder if folder.exists() else folder.parent, folder.name)
        for src in reads:
            if src.exists() and folder.resolve() in src.resolve().parents:
                raise ConvslimError(f"report folder {folder} holds the input {src}; choose another folder")


def _user_mode():
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path):
    """Temporaries for `path` whose writing process is gone (killed with SIGKILL, power cut)."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}{TMP_TAG}*.tmp"):
        try:
            pid = int(tmp.name[len(f".{path.name}{TMP_TAG}"):].split("-")[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _fsync_folder(folder):
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_TAG}{os.getpid()}-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _user_mode())
        os.replace(tmp, path)
        _fsync_folder(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path, data):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def torch_save_atomic(payload, path):
    """torch.save through a file object, so the zip's root folder is a fixed name rather than the
    temporary file's: the same payload gives the same bytes."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
