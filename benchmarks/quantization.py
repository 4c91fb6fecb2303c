"""Quantization and weight sharing on one model, in one table: accuracy, size on disk and ONNX
Runtime latency for fp32, int8 PTQ (each calibration), int8 QAT, 4-bit and 2-bit simulation,
binary, ternary, k-means 16 and 4 clusters, and prune + cluster + Huffman (Deep Compression).

    python benchmarks/quantization.py --model resnet20.pt                     # CIFAR-10, a trained model
    python benchmarks/quantization.py --model resnet20 --train-epochs 30      # train one first
    python benchmarks/quantization.py --model resnet20.pt --pruned auto.pt    # also the auto-pruned one
    python benchmarks/quantization.py --quick                                 # digits, digitsnet: a smoke run
Writes benchmarks/results/quantization.{md,json,png} (quantization_quick.* with --quick); a model trained
here is saved under ~/.cache/convslim/benchmarks/ for reuse with --model.

int8 rows run on ONNX Runtime's int8 kernels (QDQ, per-channel weights, reduce_range without
VNNI); their size is the QDQ ONNX file against the fp32 ONNX file. Simulated rows (fake quant in
PyTorch) give the size of convslim's coded file (codebook + Huffman-coded indices) against the
fp32 state dict, and no latency: they run as float.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
import time

import onnxruntime
import torch

import convslim
from convslim.binding import data_for, remember_data
from convslim.data import default_cache_dir
from convslim.quantization import methods as Q
from convslim.quantization.onnx_int8 import cpu_flags, has_vnni
from convslim.quantization.pipeline import deep_compression
from convslim.quantization.report import plot, summary
from convslim.train import TrainConfig, fit
from common import CIFAR, RESULTS, machine, markdown_table, write_results

HEADERS = ["model", "method", "W/A bits", "top-1 before FT %", "top-1 %", "change", "size KiB", "smaller by",
           "weights alone smaller by", "ORT b1 ms", "ORT b64 ms", "int8 / fp32 speed b1", "b64", "seconds"]


def get_model(args):
    """(model, splits): a saved model with the normalisation it was trained with, or a freshly trained one."""
    if args.model.endswith(".pt"):
        model = convslim.load(args.model)
        return model, data_for(model, args.data)
    splits = convslim.load_data(args.data)
    torch.manual_seed(0)                       # the initial weights, so a rerun trains the same model
    model = convslim.build_model(args.model, num_classes=splits.num_classes, in_channels=splits.input_shape[0],
                                 input_shape=list(splits.input_shape))
    remember_data(model, splits, args.data)
    print(f"training {args.model} for {args.train_epochs} epochs")
    fit(model, splits, TrainConfig(epochs=args.train_epochs, device=args.device, progress=not args.quiet))
    out = Path(default_cache_dir()) / "benchmarks" / f"{args.name}_{args.model}.pt"   # reusable via --model
    out.parent.mkdir(parents=True, exist_ok=True)
    convslim.save(model, out)
    print(f"saved the trained model to {out}")
    return model.eval(), splits


METHODS = ("ptq", "qat", "lowbit", "binary", "ternary", "cluster", "deep")   # table order; fp32 comes with ptq


def run_all(model, splits, args, tag):
    """Every method on `model` (or those of --only); returns the result dicts (one per table row)."""
    want = lambda method: not args.only or method in args.only  # noqa: E731
    ft = lambda epochs, lr=None: Q.FineTune(epochs, lr=lr or 0.01, device=args.device, progress=not args.quiet)  # noqa: E731
    calib = dict(calib_images=args.calib_images, seed=0)
    rows, tmp = [], tempfile.mkdtemp()

    def timed(fn, *a, label=None, **kw):
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        res = out[1] if isinstance(out, tuple) else out
        res["seconds"] = time.perf_counter() - t0
        res["model"] = tag
        if label:
            res["label"] = label
        rows.append(res)
        print(f"  [{tag}] {summary(res)['label']}: top-1 {res['top1']:.2f}% ({res['seconds']:.0f}s)")
        return res

    fp32 = None
    for cal in ("minmax", "percentile", "kl") if want("ptq") else ():
        r = timed(Q.ptq, model, splits, os.path.join(tmp, f"{cal}.onnx"), calibration=cal, **calib)
        if fp32 is None:   # the fp32 row: the same ONNX Runtime session settings, float model
            fp32 = {"method": "fp32", "label": "fp32", "model": tag, "wbits": 32, "abits": 32, "top1": r["float_top1"],
                    "float_top1": r["float_top1"], "bytes": r["fp32_onnx_bytes"], "size_ratio": 1.0,
                    "latency_ms": r["fp32_latency_ms"], "fp32_onnx_top1": r["fp32_onnx_top1"], "seconds": 0.0}
            rows.insert(0, fp32)
    if want("ptq"):
        timed(Q.ptq, model, splits, os.path.join(tmp, "ort-kl.onnx"), calibration="kl", engine="ort",
              label="int8 PTQ (kl, ONNX Runtime's calibrator)", **calib)
    if want("qat"):
        r = timed(Q.qat, model, splits, os.path.join(tmp, "qat.onnx"), finetune=ft(args.qat_epochs),
                  calibration="kl", **calib)
        r["ptq_top1"] = r.get("ptq_sim_top1")
    for wbits, abits in ((4, 4), (2, 8)) if want("lowbit") else ():
        timed(Q.lowbit, model, splits, wbits=wbits, abits=abits, calibration="percentile", finetune=ft(args.ft_epochs),
              **calib)
    if want("binary"):
        timed(Q.binary, model, splits, finetune=ft(args.ft_epochs))
    if want("ternary"):
        timed(Q.ternary, model, splits, finetune=ft(args.ft_epochs))
    for k in (16, 4) if want("cluster") else ():
        timed(Q.cluster, model, splits, clusters=k, finetune=ft(args.ft_epochs))
    if not want("deep"):
        return rows
    t0 = time.perf_counter()
    _, stages, _ = deep_compression(model, splits, ["prune", "cluster", "huffman"], cr=args.cr, clusters=16,
                                    epochs=args.ft_epochs, seed=0, progress=not args.quiet)
    for s in stages[1:]:
        rows.append({"method": "deep", "label": f"Deep Compression: {s['stage']}", "model": tag,
                     "wbits": 4 if "prune" not in s["stage"] else 32, "abits": 32, "top1": s["top1"],
                     "float_top1": stages[0]["top1"], "bytes": s["bytes"], "size_ratio": s["ratio"],
                     "params": s["params"], "seconds": time.perf_counter() - t0})
    print(f"  [{tag}] Deep Compression: " + ", ".join(f"{s['stage']} {s['ratio']:.2f}x" for s in stages[1:]))
    return rows


def table_row(r):
    s = summary(r)
    before = r.get("ptq_top1", r.get("before_finetune_top1"))
    fp32_lat = r.get("fp32_latency_ms") or {}
    q_lat = r.get("int8_latency_ms") or r.get("latency_ms") or {}
    speed = [f"{fp32_lat[k] / q_lat[k]:.2f}x" if k in fp32_lat and k in q_lat and r["method"] != "fp32" else ""
             for k in ("b1_ms", "b64_ms")]
    lat = [f"{q_lat[k]:.3f}" if k in q_lat else "sim." for k in ("b1_ms", "b64_ms")]
    weights = f"{r['fp32_weight_bytes'] / r['int8_weight_bytes']:.2f}x" if "int8_weight_bytes" in r else ""
    return [r["model"], s["label"], f"{s['wbits']}/{s['abits']}", f"{before:.2f}" if before is not None else "",
            f"{s['top1']:.2f}", f"{s['top1'] - s['float_top1']:+.2f}", f"{s['bytes'] / 1024:.1f}",
            f"{s['ratio']:.2f}x", weights, *lat, *speed, f"{r.get('seconds', 0):.0f}"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=f"cifar10:{CIFAR}")
    ap.add_argument("--model", default="resnet20", help="a trained .pt, or a zoo name trained with --train-epochs")
    ap.add_argument("--pruned", help="also run everything on this (auto-pruned) .pt")
    ap.add_argument("--train-epochs", type=float, default=30)
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--qat-epochs", type=float, default=1)
    ap.add_argument("--ft-epochs", type=float, default=1, help="fine-tuning of low-bit, binary, ternary, k-means")
    ap.add_argument("--cr", type=float, default=0.9, help="Deep Compression prune stage")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="digits + digitsnet, tiny budgets (a smoke run)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--name", default="quantization", help="results file name (benchmarks/results/NAME.*)")
    ap.add_argument("--only", type=lambda t: set(t.split(",")),
                    help=f"re-run only these methods ({', '.join(METHODS)}); the other rows stay as the last run "
                         "in results/NAME.json left them (after a fix to one method, say)")
    args = ap.parse_args()
    if args.only and not args.only <= set(METHODS):
        sys.exit(f"error: --only takes {', '.join(METHODS)}; got {', '.join(sorted(args.only - set(METHODS)))}")
    if args.quick:
        args.data, args.name = "digits", "quantization_quick"
        if args.model == "resnet20":
            args.model = "digitsnet"
        args.train_epochs, args.calib_images = min(args.train_epochs, 8), min(args.calib_images, 256)

    previous = json.loads((RESULTS / f"{args.name}.json").read_text()) if args.only else None
    base, splits = get_model(args)
    models = [("base", base)]
    if args.pruned:
        models.append(("pruned", convslim.load(args.pruned)))
    rows = []
    for tag, model in models:
        print(f"{tag}: {args.model if tag == 'base' else args.pruned}")
        rows += run_all(model, splits, args, tag)
    cmd = "python benchmarks/quantization.py " + " ".join(sys.argv[1:])
    commands = [cmd]
    if previous is not None:   # the rows not re-run, in table order
        kept = [r for r in previous["rows"] if _method(r) not in args.only]
        rows = sorted(kept + rows, key=lambda r: (r["model"] != "base", METHODS.index(_method(r))))
        commands = previous.get("commands") or _first_command(args.name)
        commands = commands + [cmd]

    flags = cpu_flags()
    simd = sorted(f for f in flags if f.startswith(("avx", "sse4", "fma", "amx", "asimd")))
    int8 = [r for r in rows if r["method"] in ("ptq", "qat")]
    slower = [r for r in int8 if r["int8_latency_ms"]["b1_ms"] >= r["fp32_latency_ms"]["b1_ms"]
              or r["int8_latency_ms"]["b64_ms"] >= r["fp32_latency_ms"]["b64_ms"]]
    md = [f"# Quantization and weight sharing ({args.data.split(':')[0]}, {args.model})", "",
          "Commands: " + "; then ".join(f"`{c}`" for c in commands) + f". Calibration: {args.calib_images} training images; QAT {args.qat_epochs} epoch(s); "
          f"fine-tuning of low-bit, binary, ternary and k-means {args.ft_epochs} epoch(s) (lr 0.01); "
          f"Deep Compression prunes at cr {args.cr}, then 16 clusters.", "",
          markdown_table(HEADERS, [table_row(r) for r in rows]), "",
          f"CPU: {machine()['cpu']}; VNNI: {'yes' if has_vnni() else 'no'} (SIMD flags: {', '.join(simd)}); "
          f"ONNX Runtime {onnxruntime.__version__}, {torch.get_num_threads()} threads. "
          f"reduce_range: {'off' if has_vnni() else 'on (no VNNI)'}.", "",
          "Sizes: int8 rows compare the QDQ ONNX file with the fp32 ONNX file (the 'weights alone' column leaves "
          "out the graph's node and tensor names, which the QDQ nodes multiply); simulated rows compare the coded "
          "file (codebook + indices, Huffman-coded where shorter) with the fp32 state dict. 'sim.' = simulated "
          "in PyTorch, no int8 kernel: it runs at float speed.", ""]
    if slower:
        md.append("**int8 is not faster here in every case**: " + "; ".join(
            f"{summary(r)['label']} b1 {r['fp32_latency_ms']['b1_ms']:.3f} -> {r['int8_latency_ms']['b1_ms']:.3f} ms, "
            f"b64 {r['fp32_latency_ms']['b64_ms']:.3f} -> {r['int8_latency_ms']['b64_ms']:.3f} ms" for r in slower)
            + ". ONNX Runtime's int8 convolutions gain most with VNNI (x86) or dot-product (ARM) instructions; "
              "without them the quantize/dequantize work around each layer can cost what the int8 arithmetic saves.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot([summary(r) for r in rows if r["model"] == "base"], RESULTS / f"{args.name}.png")
    md += ["", f"![accuracy and size per bit width]({args.name}.png)"]
    write_results(args.name, {"args": {**vars(args), "only": sorted(args.only or [])}, "commands": commands,
                              "vnni": has_vnni(), "cpu_flags": simd, "rows": rows}, "\n".join(md))


def _first_command(name):
    """The command an older results file recorded only in its Markdown."""
    import re
    found = re.search(r"Command: `([^`]*)`", (RESULTS / f"{name}.md").read_text())
    return [found.group(1)] if found else ["(an earlier run)"]


def _method(row):
    """The --only name a row belongs to (the fp32 row comes with ptq)."""
    return {"fp32": "ptq"}.get(row["method"], row["method"])


if __name__ == "__main__":
    main()
