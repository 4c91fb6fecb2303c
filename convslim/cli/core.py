"""`convslim train`, `eval`, `profile` and `export`: the commands that do not compress."""
from pathlib import Path

from .. import distributed as dist
from ..checkpoint import record_of, save
from ..metrics import human
from .common import (add_data_args, add_model_args, batches, fraction, int_range, non_negative, open_model,
                     open_model_and_data, positive, positive_int, write_json)


OPSETS = (13, 20)   # the opsets torch's exporter and ONNX Runtime both handle for our layers


def cmd_train(args):
    from ..binding import remember_data
    from ..train import TrainConfig, fit, evaluate

    out = Path(args.out)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                      nesterov=not args.no_nesterov, weight_decay=args.weight_decay, schedule=args.schedule,
                      label_smoothing=args.label_smoothing, seed=args.seed, device=args.device,
                      channels_last=not args.no_channels_last, amp=args.amp, progress=not args.quiet).check()
    model, splits = open_model_and_data(args)
    remember_data(model, splits, args.data)
    log = fit(model, splits, cfg, resume=getattr(args, "state", None))
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
            write_json(args, args.json, log)
    dist.barrier()


def cmd_eval(args):
    from ..train import evaluate

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
    from ..metrics import profile
    from ..train import evaluate

    model, splits = open_model_and_data(args) if args.data else (open_model(args), None)
    prof = profile(model, record_of(model).input_shape, latency_batches=args.batches,
                   repeats=args.repeats, onnx=not args.no_onnx, threads=args.threads)
    if splits is not None:
        prof["accuracy"] = evaluate(model, splits, args.split, device=dist.pick_device(args.device))
    print_profile(prof)
    if args.compare_separable:
        from ..convert import compare_layers, format_table
        print("\nper conv layer as is, as depthwise-separable and as Ghost replacement:")
        print(format_table(compare_layers(model)))
    if args.json:
        write_json(args, args.json, prof)
        print(f"wrote {args.json}")


def cmd_export(args):
    from ..export import export_onnx

    out = Path(args.out)
    model = open_model(args)
    diff = export_onnx(model, out, record_of(model).input_shape, opset=args.opset)
    print(f"wrote {out} ({Path(out).stat().st_size / 1024:.1f} KiB); "
          f"ONNX Runtime matches PyTorch (max abs diff {diff:.2e})")


def register(sub):
    p = sub.add_parser("train", help="train a zoo, factory or saved model")
    add_model_args(p)
    add_data_args(p, default="digits")
    p.add_argument("--epochs", type=non_negative, default=30)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive, default=0.1)
    p.add_argument("--momentum", type=fraction, default=0.9, help="in [0, 1]")
    p.add_argument("--no-nesterov", action="store_true")
    p.add_argument("--weight-decay", type=non_negative, default=5e-4)
    p.add_argument("--schedule", choices=["cosine", "onecycle", "constant"], default="cosine")
    p.add_argument("--label-smoothing", type=fraction, default=0.0)
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (mixed precision) for forward and loss")
    p.add_argument("--resume", action="store_true",
                   help="save the training state to OUT.state.pt after every epoch and continue from it when "
                        "it exists (same command again after a stop)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--out", required=True, help="where to save the trained model (.pt)")
    p.add_argument("--json", help="write the training log here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="top-1 and top-5 accuracy on a split")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("profile", help="per-layer params, MACs, FLOPs; size; latency; accuracy")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--batches", type=batches, default=[1, 64], help="latency batch sizes, e.g. 1,64")
    p.add_argument("--repeats", type=positive_int, default=20, help="timed runs per latency figure")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="threads PyTorch and ONNX Runtime time with (default 1, as the other commands time)")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime latency")
    p.add_argument("--compare-separable", action="store_true",
                   help="also show each conv's params and FLOPs as a separable or Ghost replacement")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="write the same figures to this file")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("export", help="write ONNX and check ONNX Runtime against PyTorch")
    add_model_args(p)
    p.add_argument("--opset", type=int_range(OPSETS[0], OPSETS[1]), default=17, help=f"ONNX opset, {OPSETS[0]} to {OPSETS[1]}")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)
