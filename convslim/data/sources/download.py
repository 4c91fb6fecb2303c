"""``cifar10`` / ``cifar100`` without a path: the official archive, downloaded once into the cache folder.

As torchvision does: the archive is downloaded to a temporary file beside its final name, its MD5
checked, then renamed into place; a failed download or a wrong checksum leaves nothing behind and
stops with one line. An archive already there is checked again before it is used. The address is
``$CONVSLIM_DATA_URL`` (default the official one) followed by the archive's name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request

from tqdm.auto import tqdm

from convslim.data.sources.base import note
from convslim.errors import ConvslimError

BASE_URL = "https://www.cs.toronto.edu/~kriz/"
URL_ENV = "CONVSLIM_DATA_URL"
ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
MD5 = {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
       "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"}
TIMEOUT_S = 60                       # seconds without a byte before a download is given up
BLOCK = 1 << 20


def archive_url(name: str) -> str:
    base = os.environ.get(URL_ENV, "").strip() or BASE_URL
    return base.rstrip("/") + "/" + name


def md5_of(path: str) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def fetch(kind: str, folder: str) -> str:
    """The path of ``kind``'s official archive in ``folder``, downloaded and checked if need be."""
    name = ARCHIVES[kind]
    want = MD5[name]
    dest = os.path.join(folder, name)
    if os.path.isfile(dest):
        if md5_of(dest) == want:
            return dest
        note(f"{dest} does not match its MD5; downloading it again")
    url = archive_url(name)
    hint = f"download {name} yourself and pass {kind}:PATH"
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".download", dir=folder)
    except OSError as e:
        raise ConvslimError(f"cannot download {url} into {folder}: {e}; or {hint}") from None
    try:
        h = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as f:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
                bar = tqdm(total=r.length, desc=f"downloading {name}", unit="B", unit_scale=True,
                           disable=None, leave=False)
                try:
                    while block := r.read(BLOCK):
                        f.write(block)
                        h.update(block)
                        bar.update(len(block))
                finally:
                    bar.close()
            f.flush()
            os.fsync(f.fileno())
        got = h.hexdigest()
        if got != want:
            raise ConvslimError(f"{url} arrived damaged (MD5 {got}, expected {want}); nothing was kept: "
                                f"try again, or {hint}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)               # mkstemp makes it private; the cache can be shared
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise ConvslimError(f"cannot download {url}: {' '.join(str(e).split()) or type(e).__name__}; "
                            f"{hint}") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return dest
