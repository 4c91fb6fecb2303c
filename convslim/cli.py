"""The `convslim` command: one entry point, one subcommand per job.

Every user mistake surfaces as ConvslimError and is printed as one line with exit status 2;
outputs are checked before any work starts and written atomically, so nothing is half-written.
"""
import argparse
import importlib
import json
import sys
from pathlib import Path

from . import distributed as dist
from .checkpoint import record_of, save
from .errors import ConvslimError
from .fileio import check_output_path, write_text_atomic
from .metrics import human


# Each family adds its own subcommands through a `register(subparsers)` function.
COMMAND_MODULES = ["convslim.pruning.cli", "convslim.families_cli", "convslim.quantization.cli"]


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _batches(text):
    try:
        values = [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got {text!r}")
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("batch sizes must be at least 1")
    return values


def add_model_args(p, required=True):
    p.add_argument("--model", required=required,
                   help="zoo name (resnet20), a saved .pt, file.py:factory or package.module:factory")
    p.add_argument("--weights", help="state dict to load into a zoo or factory model")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier for a zoo model")
    p.add_argument("--num-classes", type=int, help="classes (default: from --data, else 10)")
    p.add_argument("--in-channels", type=int, help="input channels (default: from --data, else 3)")
    p.add_argument("--input-size", type=int, help="input height and width when no --data is given (default 32)")


def add_data_args(p, required=False, default=None):
    p.add_argument("--data", required=required, default=default,
                   help="digits | cifar10:PATH | cifar100:PATH | imagefolder:PATH")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of train held out for validation")
    p.add_argument("--resize", type=int, help="resize imagefolder images to this square size")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, shuffling and init")


def open_model(args, splits=None):
    """The model named by --model; a new one takes its shape from the data when there is data."""
    from .modelspec import resolve

    if args.model.endswith(".pt") and args.weights:
        raise ConvslimError("--weights applies to a zoo or factory model, not to a saved .pt")
    if splits is not None:
        shape = list(splits.input_shape)
        classes = args.num_classes or splits.num_classes
    else:
        size = args.input_size or 32
        shape = [args.in_channels or 3, size, size]
        classes = args.num_classes or 10
    if args.width <= 0:
        raise ConvslimError(f"--width must be positive, got {args.width}")
    return resolve(args.model, num_classes=classes, in_channels=shape[0], width=args.width,
                   input_shape=shape, weights=args.weights)


def open_data(args, model=None):
    from .data import load_data
    from .session import data_for

    if model is not None:
        return data_for(model, args.data, val_fraction=args.val_fraction, seed=args.seed, resize=args.resize)
    return load_data(args.data, val_fraction=args.val_fraction, seed=args.seed, resize=args.resize)


def open_model_and_data(args):
    """A saved model brings its own shape and normalisation; a new one takes its shape from the data."""
    if args.model.endswith(".pt"):
        model = open_model(args)
        return model, open_data(args, model)
    splits = open_data(args)
    return open_model(args, splits), splits


def cmd_train(args):
    from .session import remember_data
    from .train import TrainConfig, fit, evaluate

    out = check_output_path(args.out, inputs=[args.model, args.weights])
    if args.json:
        check_output_path(args.json, inputs=[args.model, args.weights])
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                      nesterov=not args.no_nesterov, weight_decay=args.weight_decay, schedule=args.schedule,
                      label_smoothing=args.label_smoothing, seed=args.seed, device=args.device,
                      channels_last=not args.no_channels_last, progress=not args.quiet).check()
    model, splits = open_model_and_data(args)
    remember_data(model, splits, args.data)
    log = fit(model, splits, cfg)
    test = evaluate(model, splits, "test", device=dist.pick_device(cfg.device))
    log["test"] = test
    if dist.is_main():
        last = log["epochs"][-1] if log["epochs"] else {}
        save(model, out, inputs=[args.model, args.weights], train={
            "epochs": cfg.epochs, "val_acc": last.get("val_acc"), "test_acc": test["top1"],
            "seconds": log["seconds"], "seed": cfg.seed})
        print(f"test top-1 {test['top1']:.2f}%  top-5 {test['top5']:.2f}%  "
              f"({log['seconds']:.1f}s training, data overhead {100 * log['data_overhead']:.1f}% of step time)")
        print(f"saved {out}")
        if args.json:
            write_text_atomic(args.json, json.dumps(log, indent=2))
    dist.barrier()


def cmd_eval(args):
    from .train import evaluate

    model, splits = open_model_and_data(args)
    res = evaluate(model, splits, args.split, batch_size=args.batch_size,
                   device=dist.pick_device(args.device), progress=True)
    if dist.is_main():
        print(f"{args.split}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
              f"loss {res['loss']:.4f}  ({res['images']} images, {res['images_per_s']:.0f} img/s)")


def print_profile(prof):
    rows = prof["layers"]
    width = max([len(r["layer"]) for r in rows] + [5])
    print(f"{'layer':<{width}}  {'type':<12} {'output':<14} {'params':>10} {'MACs':>12} {'FLOPs':>12}")
    for r in rows:
        shape = "x".join(map(str, r["output"]))
        print(f"{r['layer']:<{width}}  {r['type']:<12} {shape:<14} {r['params']:>10,} {r['macs']:>12,} {r['flops']:>12,}")
    t = prof["totals"]
    print(f"\ntotal: {human(t['params'])} params, {human(t['macs'])} MACs, {human(t['flops'])} FLOPs, "
          f"{t['bytes'] / 1024:.1f} KiB on disk (state dict)")
    print("MACs: conv/linear multiply-accumulates; FLOPs: seed 002 formulas, conv 2HW(Cin/g*K^2+1)Cout, linear (2I-1)O")
    lat = prof.get("latency")
    if lat:
        parts = [f"{k.replace('_ms', '')} {v:.3f} ms" for k, v in lat.items() if k.endswith("_ms")]
        print(f"latency (median, {lat['threads']} threads): " + ", ".join(parts))
    if "accuracy" in prof:
        a = prof["accuracy"]
        print(f"accuracy ({a['split']}): top-1 {a['top1']:.2f}%  top-5 {a['top5']:.2f}%")


def cmd_profile(args):
    from .metrics import profile
    from .train import evaluate

    if args.json:
        check_output_path(args.json, inputs=[args.model, args.weights])
    model, splits = open_model_and_data(args) if args.data else (open_model(args), None)
    prof = profile(model, record_of(model).input_shape, latency_batches=args.batches,
                   repeats=args.repeats, onnx=not args.no_onnx)
    if splits is not None:
        prof["accuracy"] = evaluate(model, splits, args.split, device=dist.pick_device(args.device))
    print_profile(prof)
    if args.compare_separable:
        from .compact import compare_layers, format_table
        print("\nper conv layer as is, as depthwise-separable and as Ghost replacement:")
        print(format_table(compare_layers(model)))
    if args.json:
        write_text_atomic(args.json, json.dumps(prof, indent=2))
        print(f"wrote {args.json}")


def cmd_export(args):
    from .export import export_onnx

    out = check_output_path(args.out, inputs=[args.model, args.weights])
    model = open_model(args)
    diff = export_onnx(model, out, record_of(model).input_shape, opset=args.opset)
    print(f"wrote {out} ({Path(out).stat().st_size / 1024:.1f} KiB); "
          f"ONNX Runtime matches PyTorch (max abs diff {diff:.2e})")


def build_parser():
    parser = argparse.ArgumentParser(prog="convslim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a zoo, factory or saved model")
    add_model_args(p)
    add_data_args(p, default="digits")
    p.add_argument("--epochs", type=float, default=30)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--no-nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=["cosine", "onecycle", "constant"], default="cosine")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--out", required=True, help="where to save the trained model (.pt)")
    p.add_argument("--json", help="write the training log here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="top-1 and top-5 accuracy on a split")
    add_model_args(p)
    add_data_args(p, required=True)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("profile", help="per-layer params, MACs, FLOPs; size; latency; accuracy")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--batches", type=_batches, default=[1, 64], help="latency batch sizes, e.g. 1,64")
    p.add_argument("--repeats", type=_positive_int, default=20, help="timed runs per latency figure")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime latency")
    p.add_argument("--compare-separable", action="store_true",
                   help="also show each conv's params and FLOPs as a separable or Ghost replacement")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="write the same figures to this file")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("export", help="write ONNX and check ONNX Runtime against PyTorch")
    add_model_args(p)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "epochs", 0) is not None and getattr(args, "epochs", 0) < 0:
            raise ConvslimError(f"--epochs must be non-negative, got {args.epochs}")
        args.func(args)
    except ConvslimError as exc:
        print(f"convslim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convslim: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
