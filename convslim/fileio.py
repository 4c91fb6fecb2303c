"""Writing outputs so that a failure never leaves a half-written or clobbered file."""
import contextlib
import os
import tempfile
from pathlib import Path

from .errors import ConvslimError


def check_output_path(path, *, inputs=()):
    """Refuse an output that would overwrite one of the inputs or land in a missing folder."""
    out = Path(path)
    for src in inputs:
        if src and Path(src).exists() and out.exists() and out.resolve() == Path(src).resolve():
            raise ConvslimError(f"output {out} is also an input; choose another --out")
    if out.parent and not out.parent.exists():
        raise ConvslimError(f"output folder {out.parent} does not exist")
    if out.is_dir():
        raise ConvslimError(f"output {out} is a folder, expected a file path")
    return out


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)
