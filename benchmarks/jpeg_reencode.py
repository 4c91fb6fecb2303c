"""Re-encode an image tree (train/<class>/*.jpg, test/<class>/*.jpg) as JPEG at another quality.

Why: our CIFAR-10 copy is already JPEG (quality 75, 4:2:0 chroma), and the original pixels are not
available here. Training the same recipe on the tree encoded once more at several qualities shows
how accuracy moves with JPEG loss, which bounds what the first encoding costs (issue 13).

    python jpeg_reencode.py SRC_DIR DST_DIR --quality 75 [--workers 8]

Chroma stays 4:2:0 (as in the source), so only the quantisation changes between qualities.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image


def reencode(job):
    src, dst, quality = job
    with Image.open(src) as im:
        im.convert("RGB").save(dst, "JPEG", quality=quality, subsampling=2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--quality", type=int, required=True)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    src, dst = Path(args.src), Path(args.dst)
    files = sorted(src.glob("*/*/*.jpg"))
    if not files:
        sys.exit(f"error: no */*/*.jpg under {src}")
    if dst.exists():
        sys.exit(f"error: {dst} exists; choose a new folder")
    jobs = []
    for f in files:
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((f, out, args.quality))
    with ProcessPoolExecutor(args.workers) as pool:
        list(pool.map(reencode, jobs, chunksize=512))
    print(f"wrote {len(jobs)} images to {dst} at quality {args.quality}")


if __name__ == "__main__":
    main()
