"""The compression families side by side at similar FLOPs: automatic channel pruning, pruning with
a KD fine-tune, SVD / Tucker-2 / CP decomposition, 90% unstructured sparsity, a separable
conversion trained by KD, and a compact zoo network trained from scratch.

Every row: test top-1, params, FLOPs, size on disk (the saved file; CSR for sparsity) and measured
CPU latency. The auto-pruned model sets the FLOPs target; decomposition energies and the compact
net's width are chosen to land near it (no training needed to pick them: FLOPs are counted).

    python benchmarks/families.py                                   # resnet20 and vgg16@0.25 on CIFAR-10
    python benchmarks/families.py --models resnet20 --epochs 30 --ft-epochs 5
    python benchmarks/families.py --quick                           # digits, tiny budgets: a smoke run
Writes benchmarks/results/families.{md,json} (--name to choose; families_quick.* with --quick).
"""
import argparse
import sys
import copy
import tempfile
import time
from pathlib import Path

import torch

import convslim
from convslim.binding import remember_data
from convslim.budget import SearchConfig
from convslim.checkpoint import example_input, record_of
from convslim.convert import convert
from convslim.decomposition import decompose, plan
from convslim.distill import DistillConfig, distill_fit
from convslim.kd import kd_loss_fn
from convslim.metrics import count, latency
from convslim.pruning.auto import auto_prune
from convslim.pruning.prune import apply_rule, channel_importance
from convslim.sparsity import SparsifyConfig, save_sparse, sparsify
from convslim.train import TrainConfig, evaluate, fit
from common import CIFAR, markdown_table, write_results


def train_cfg(args, epochs, lr=None):
    return TrainConfig(epochs=epochs, lr=lr or args.lr, batch_size=args.batch_size, device=args.device,
                       progress=not args.quiet)


def measure(name, model, splits, seconds, *, disk_bytes=None, note=""):
    """One table row: accuracy, size, FLOPs and latency of a finished model."""
    model = model.cpu().eval()
    c = count(model, example_input(model))
    if disk_bytes is None:
        with tempfile.TemporaryDirectory() as tmp:
            disk_bytes = convslim.save(model, Path(tmp) / "m.pt").stat().st_size
    lat = latency(model, record_of(model).input_shape, batches=(1, 64), repeats=20, onnx=True)
    row = {"method": name, "test_acc": evaluate(model, splits, "test")["top1"], "params": c["params"],
           "flops": c["flops"], "bytes": disk_bytes, "torch_b1_ms": lat["torch_b1_ms"], "torch_b64_ms": lat["torch_b64_ms"],
           "ort_b1_ms": lat["ort_b1_ms"], "ort_b64_ms": lat["ort_b64_ms"], "train_seconds": seconds, "note": note}
    print(f"  {name}: top-1 {row['test_acc']:.2f}%, {c['flops']:,} FLOPs, {c['params']:,} params, "
          f"{disk_bytes / 1024:.1f} KiB, torch b1 {row['torch_b1_ms']:.2f} ms")
    return row


def energy_for_flops(model, method, target, steps=14):
    """The energy whose decomposition lands closest to `target` FLOPs (FLOPs counted, not trained)."""
    base = count(model, example_input(model))["flops"]

    def flops(e):
        return base - sum(r["flops"] - r["new_flops"] for r in plan(model, method, e) if r["apply"])

    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if flops(mid) < target else (lo, mid)
    return hi


def width_for_flops(name, target, splits, steps=12):
    """The width multiplier of a zoo net whose FLOPs are closest to `target` from below."""
    def flops(w):
        m = convslim.build_model(name, num_classes=splits.num_classes, in_channels=splits.input_shape[0],
                                 width=w, input_shape=splits.input_shape)
        return count(m, example_input(m))["flops"]

    lo, hi = 0.05, 2.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if flops(mid) <= target else (lo, mid)
    return round(lo, 3)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_model(spec, splits, args):
    name, _, width = spec.partition("@")
    width = float(width or 1.0)
    print(f"== {name} width {width}")
    if name.endswith(".pt"):  # a trained checkpoint: reuse it instead of training the original here
        base = convslim.load(name)
        t_base = record_of(base).meta.get("train", {}).get("seconds", 0.0)
    else:
        base = convslim.build_model(name, num_classes=splits.num_classes, in_channels=splits.input_shape[0],
                                    width=width, input_shape=splits.input_shape)
        remember_data(base, splits, args.data)
        _, t_base = timed(lambda: fit(base, splits, train_cfg(args, args.epochs, args.base_lr), validate=False))
    base.eval()
    rows = [measure("original", base, splits, t_base)]

    scfg = SearchConfig(max_acc_loss=args.max_acc_loss, min_interval=args.min_interval, probe_epochs=args.probe_epochs,
                        final_epochs=args.ft_epochs, lr=args.lr, batch_size=args.batch_size, device=args.device,
                        search="thesis")              # one cr: the same pruning is re-made for the KD row
    imp = channel_importance(base, splits)
    (pruned, summary), t = timed(lambda: auto_prune(base, splits, scfg, importance=imp, progress=not args.quiet))
    rows.append(measure("auto channel pruning", pruned, splits, t, note=f"cr {summary['chosen_cr']:.3f}"))
    target = rows[-1]["flops"]
    if target >= rows[0]["flops"]:      # nothing fitted the budget: still compare the others at half the FLOPs
        target = rows[0]["flops"] // 2
        rows[-1]["note"] += "; no probe within budget, others matched to 50% FLOPs"

    kd_model, _ = apply_rule(base, imp, "cr", summary["chosen_cr"])
    _, t = timed(lambda: fit(kd_model, splits, train_cfg(args, args.ft_epochs), loss_fn=kd_loss_fn(copy.deepcopy(base)),
                             validate=False))
    rows.append(measure("same pruning + KD fine-tune", kd_model, splits, t, note="KD from the original, T=4"))

    for method in ("svd", "tucker", "cp"):
        energy = energy_for_flops(base, method, target)

        def run():
            slim, _ = decompose(base, method, energy)
            fit(slim, splits, train_cfg(args, args.ft_epochs), validate=False)
            return slim
        slim, t = timed(run)
        rows.append(measure(f"{method} decomposition", slim, splits, t, note=f"energy {energy:.3f}"))
        if abs(rows[-1]["flops"] / target - 1) > 0.1:   # e.g. CP is cheaper than the target even at full energy
            rows[-1]["note"] += f"; {rows[-1]['flops'] / target:.0%} of the target FLOPs (closest reachable)"

    def run_sparse():
        return sparsify(base, splits, SparsifyConfig(sparsity=0.9, steps=3, epochs_per_step=args.ft_epochs / 3, lr=args.lr,
                                                     batch_size=args.batch_size, device=args.device),
                        progress=not args.quiet)[0]
    sparse, t = timed(run_sparse)
    with tempfile.TemporaryDirectory() as tmp:
        csr = save_sparse(sparse, Path(tmp) / "s.csr").stat().st_size
    rows.append(measure("90% unstructured sparsity", sparse, splits, t, disk_bytes=csr,
                        note="size is the CSR file; FLOPs and latency unchanged on dense kernels"))

    def run_convert():
        student, _ = convert(base, "separable")
        distill_fit(student, base, splits, train_cfg(args, args.convert_epochs, args.base_lr), DistillConfig(("kd",)),
                    validate=False)
        return student
    student, t = timed(run_convert)
    rows.append(measure("separable conversion + KD", student, splits, t, note="FLOPs fixed by the conversion"))

    w = width_for_flops(args.compact, target, splits)
    compact = convslim.build_model(args.compact, num_classes=splits.num_classes, in_channels=splits.input_shape[0],
                                   width=w, input_shape=splits.input_shape)
    _, t = timed(lambda: fit(compact, splits, train_cfg(args, args.epochs, args.base_lr), validate=False))
    rows.append(measure(f"{args.compact} from scratch", compact, splits, t, note=f"width {w}"))
    return {"model": name, "width": width, "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,vgg16@0.25",
                    help="zoo names, NAME@WIDTH for a reduced width, or trained .pt checkpoints")
    ap.add_argument("--data", default=f"cifar10:{CIFAR}")
    ap.add_argument("--compact", default="mobilenetv1", help="compact zoo net trained from scratch")
    ap.add_argument("--epochs", type=float, default=30, help="training of the original and the compact net")
    ap.add_argument("--ft-epochs", type=float, default=5, help="fine-tune of every compressed model")
    ap.add_argument("--convert-epochs", type=float, default=15, help="KD training of the separable conversion")
    ap.add_argument("--probe-epochs", type=float, default=0.5)
    ap.add_argument("--max-acc-loss", type=float, default=1.0)
    ap.add_argument("--min-interval", type=float, default=0.02)
    ap.add_argument("--base-lr", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--quick", action="store_true", help="digits, digits_resnet, tiny budgets (smoke run)")
    ap.add_argument("--name", default="families", help="results/<name>.{md,json}")
    args = ap.parse_args()
    if args.quick:
        args.models, args.data, args.compact = "digits_resnet", "digits", "mobilenetv1"
        args.epochs, args.ft_epochs, args.convert_epochs, args.probe_epochs = 4, 2, 3, 0.5
        args.min_interval, args.max_acc_loss, args.batch_size, args.base_lr, args.quiet = 0.125, 5.0, 64, 0.05, True
    torch.manual_seed(0)
    splits = convslim.load_data(args.data)
    results = [run_model(spec, splits, args) for spec in args.models.split(",")]
    head = ["method", "test top-1 %", "params", "FLOPs", "size KiB", "torch b1 ms", "torch b64 ms", "ORT b1 ms",
            "ORT b64 ms", "train s", "note"]
    parts = [f"# Compression families at similar FLOPs ({args.data.split(':')[0]})", "",
             f"Command: `python benchmarks/families.py {' '.join(sys.argv[1:])}`; "
             f"original and compact net trained {args.epochs:g} epochs (a .pt original keeps its own training), "
             f"fine-tunes {args.ft_epochs:g} epochs at lr {args.lr}, probes {args.probe_epochs:g} epochs, "
             f"separable conversion {args.convert_epochs:g} epochs of KD, auto pruning budget {args.max_acc_loss} "
             f"points (val). Latency: median CPU ms, {torch.get_num_threads()} threads.", ""]
    for res in results:
        parts += [f"## {res['model']} (width {res['width']:g})", "", markdown_table(head, [
            [r["method"], f"{r['test_acc']:.2f}", f"{r['params']:,}", f"{r['flops']:,}", f"{r['bytes'] / 1024:.1f}",
             f"{r['torch_b1_ms']:.2f}", f"{r['torch_b64_ms']:.1f}", f"{r['ort_b1_ms']:.2f}", f"{r['ort_b64_ms']:.1f}",
             f"{r['train_seconds']:.0f}", r["note"]] for r in res["rows"]]), ""]
    parts.append("Sparsity stores 90% zeros in CSR: the file shrinks, but dense kernels still multiply the zeros, so "
                 "its FLOPs and latency are the original's. Decomposition energies and the compact net's width are "
                 "picked by counting FLOPs to match the auto-pruned model; the separable conversion's FLOPs follow "
                 "from the architecture.")
    write_results("families_quick" if args.quick else args.name,
                  {"args": vars(args), "results": results}, "\n".join(parts))


if __name__ == "__main__":
    main()
