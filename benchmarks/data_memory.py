"""Peak memory (VmHWM) and seconds of loading an image folder and iterating one training epoch, as
the folder grows: the old in-RAM path against the streamed decode cache.

Makes synthetic class-per-folder image trees (10 classes, JPEG, --image-size pixels square; the
smaller trees are hard links to the first images of the largest), then for each size and mode runs
a fresh Python process that loads ``imagefolder:PATH`` with an empty cache (``CONVSLIM_CACHE`` in a
temporary folder), iterates one epoch of the training loader, and reports its own peak resident
set (VmHWM, which counts file pages mapped into the process too) and its resident set right after
importing convslim (the baseline). A second process then loads the same folder from the warm cache.

Modes:
  before   the code of --baseline-ref (default: the commit before streaming), exported with
           `git archive` and put first on PYTHONPATH: decoded chunks are concatenated, transposed,
           reordered and saved, all in memory
  memory   this code, in_memory=True: decoded straight into the cache file, then read into memory
  stream   this code, in_memory=False: decoded straight into the cache file, batches read from it

    ../.venv/bin/python data_memory.py              # writes results/data_memory.md and .json
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLASSES = 10
BASELINE_REF = "5446ef9"            # the last commit that decoded image folders into memory only


# --------------------------------------------------------------------------------------------
# the measured process
# --------------------------------------------------------------------------------------------

def status_kb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def worker(args):
    import resource

    import torch

    import convslim
    torch.set_num_threads(1)
    base_kb = status_kb("VmRSS")
    kwargs = {} if args.mode == "before" else {"in_memory": args.mode == "memory"}
    t0 = time.perf_counter()
    splits = convslim.load_data(f"imagefolder:{args.folder}", **kwargs)
    load_s = time.perf_counter() - t0
    load_kb = status_kb("VmHWM")
    t0 = time.perf_counter()
    seen = 0
    for x, y in splits.loader("train", args.batch_size):
        seen += len(y)
    epoch_s = time.perf_counter() - t0
    out = {"convslim": convslim.__file__, "baseline_kb": base_kb, "peak_after_load_kb": load_kb,
           "peak_kb": status_kb("VmHWM"), "rss_end_kb": status_kb("VmRSS"),
           "workers_peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
           "load_s": load_s, "epoch_s": epoch_s, "epoch_images": seen,
           "on_disk": type(splits.train_x).__name__ != "Tensor", "sizes": splits.sizes(),
           "shape": list(splits.input_shape)}
    print("RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------

def make_images(root: Path, n: int, size: int) -> float:
    """n smooth synthetic JPEGs (gradients, a disc, some noise) in root/<class>/, 10 classes."""
    from PIL import Image

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for c in range(CLASSES):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % CLASSES
        a, b, r = rng.random(3)
        cy, cx = rng.random(2)
        base = np.stack([a * xx + (1 - a) * yy, b * yy, (xx * r + c / CLASSES) % 1.0], -1)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < 0.05 + 0.1 * r)[..., None]
        img = np.clip(255 * np.where(disc, 1 - base, base) + rng.normal(0, 8, (size, size, 3)), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(root / f"c{c}" / f"{i:06d}.jpg", quality=90)
    return time.perf_counter() - t0


def link_subset(src: Path, dest: Path, n: int) -> None:
    for c in range(CLASSES):
        (dest / f"c{c}").mkdir(parents=True, exist_ok=True)
        for f in sorted((src / f"c{c}").iterdir())[: n // CLASSES]:
            os.link(f, dest / f"c{c}" / f.name)


def export_baseline(ref: str, dest: Path) -> str | None:
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "convslim"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"no baseline ({ref}): {e}", file=sys.stderr)
        return None


def run_worker(folder: Path, mode: str, cache: Path, baseline: Path, batch_size: int) -> dict:
    env = {**os.environ, "CONVSLIM_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("CONVSLIM_IN_MEMORY_MAX", None)
    if mode == "before":
        env["PYTHONPATH"] = str(baseline) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "--folder", str(folder),
                        "--mode", mode, "--batch-size", str(batch_size)], env=env, capture_output=True,
                       text=True, cwd=str(HERE))
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"worker {mode} {folder} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    out = json.loads(line[len("RESULT "):])
    want = baseline if mode == "before" else ROOT
    if not out["convslim"].startswith(str(want)):
        raise SystemExit(f"worker {mode} imported {out['convslim']}, not the code under {want}")
    return out


def mib(kb):
    return f"{kb / 1024:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,8000,32000", help="images per folder, comma-separated")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--modes", default="before,memory,stream")
    ap.add_argument("--baseline-ref", default=BASELINE_REF)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--tmp", help="folder for the images and caches (default: a new temporary folder)")
    ap.add_argument("--name", default="data_memory")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(HERE))
    from common import machine, markdown_table, write_results

    sizes = sorted(int(s) for s in args.sizes.split(","))
    modes = [m for m in args.modes.split(",") if m]
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="convslim-data-memory-"))
    tmp.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    try:
        baseline = tmp / "baseline"
        baseline.mkdir(exist_ok=True)
        base_commit = export_baseline(args.baseline_ref, baseline) if "before" in modes else None
        if base_commit is None:
            modes = [m for m in modes if m != "before"]
        largest = tmp / f"n{sizes[-1]}"
        gen_s = make_images(largest, sizes[-1], args.image_size)
        print(f"made {sizes[-1]} images in {gen_s:.1f} s", flush=True)
        for n in sizes[:-1]:
            link_subset(largest, tmp / f"n{n}", n)
        runs = []
        for n in sizes:
            folder = tmp / f"n{n}"
            for mode in modes:
                cache = tmp / f"cache-{n}-{mode}"
                for state in ("cold", "warm"):
                    r = run_worker(folder, mode, cache, baseline, args.batch_size)
                    r.update(images=n, mode=mode, cache=state,
                             data_mib=n * 3 * args.image_size ** 2 / 2 ** 20)
                    runs.append(r)
                    print(f"{n:>6} {mode:>6} {state}: peak {mib(r['peak_kb'])} MiB (baseline "
                          f"{mib(r['baseline_kb'])}), load {r['load_s']:.1f} s, epoch {r['epoch_s']:.1f} s",
                          flush=True)
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    total_s = time.perf_counter() - t_start

    command = "python benchmarks/data_memory.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("sizes", args.sizes), ("image_size", args.image_size),
                                                       ("modes", args.modes), ("baseline_ref", args.baseline_ref))
        if v != ap.get_default(k))
    mach = machine()
    labels = {"before": f"before ({base_commit or args.baseline_ref}, in RAM)", "memory": "in_memory=True",
              "stream": "streamed (in_memory=False)"}
    rows = []
    for r in runs:
        rows.append([r["images"], f"{r['data_mib']:.0f}", labels[r["mode"]], r["cache"], mib(r["peak_kb"]),
                     mib(r["peak_kb"] - r["baseline_kb"]), mib(r["peak_after_load_kb"] - r["baseline_kb"]),
                     mib(r["workers_peak_kb"]), f"{r['load_s']:.1f}", f"{r['epoch_s']:.2f}",
                     f"{r['epoch_images'] / max(r['epoch_s'], 1e-9):.0f}"])
    md = (f"# Data memory: image folders, cold and warm decode cache\n\n"
          f"Command: `{command}` ({total_s / 60:.1f} min in all)\n\n"
          f"Machine: {mach['cpu']}, {os.cpu_count()} cores (torch threads {mach['cores']}), torch {mach['torch']}"
          f"{', GPU ' + mach['gpu'] if mach['gpu'] else ''}. Synthetic JPEGs, {args.image_size}x{args.image_size}, "
          f"{CLASSES} classes in class-per-folder trees (20% held out as the test split, 10% of the rest for "
          f"validation); one training epoch at batch {args.batch_size} with random crop and flip, no model.\n\n"
          + markdown_table(["images", "uint8 MiB", "path", "cache", "peak RSS MiB", "peak over baseline",
                            "of which load", "decode workers MiB", "load s", "epoch s", "epoch img/s"], rows)
          + "\n\nPeak RSS is the measured process's VmHWM (it counts file pages mapped into the process as "
            "well as its own memory); the baseline is its RSS right after `import convslim` (torch). "
            "'of which load' is the peak over baseline reached by the end of `load_data`. Decode workers "
            "(a process pool above 2048 images) are separate processes: their largest peak is shown apart. "
            "Each row is a fresh process; 'cold' starts from an empty cache (decoding), 'warm' reads the "
            "cache the cold run wrote (checking its CRC).\n")
    write_results(args.name, {"command": command, "image_size": args.image_size, "sizes": sizes, "modes": modes,
                              "baseline_commit": base_commit, "total_seconds": total_s, "runs": runs}, md)


if __name__ == "__main__":
    main()
