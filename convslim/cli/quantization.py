"""`convslim quantize`, `convslim compress` and `convslim decompress`.

    convslim quantize --model m.pt --data cifar10:PATH --method ptq --calibration kl --out m-int8.onnx
    convslim quantize --model m.pt --method lowbit --wbits 4 --abits 8 --out m-w4.csz
    convslim quantize --model m.pt --method cluster --clusters 16 --out m-k16.csz
    convslim compress --model m.pt --pipeline prune,cluster,huffman --cr 0.9 --out m-dc.csz
    convslim decompress --model m-dc.csz --out m-dc.pt
"""
from pathlib import Path

from ..errors import ConvslimError
from .latency import batch_list
from .common import (add_data_args, add_model_args, float_range, fraction, int_range, non_negative,
                     open_model_and_data, open_teacher, positive, positive_int, write_json)

METHODS = ("ptq", "qat", "lowbit", "binary", "ternary", "cluster")


def _check_out(args, suffixes):
    out = Path(args.out)
    if out.suffix not in suffixes:
        raise ConvslimError(f"--out for --method {getattr(args, 'method', 'compress')} must end in "
                            f"{' or '.join(suffixes)}, got {out.name}")
    return out


def _bits(args):
    """(wbits, abits) from --bits / --wbits / --abits, checked before any work starts."""
    from ..quantization.quantizers import check_bits

    default = 8 if args.method in ("ptq", "qat") else 4
    bits = default if args.bits is None else check_bits(args.bits, "--bits")
    wbits = bits if args.wbits is None else check_bits(args.wbits, "--wbits")
    abits = bits if args.abits is None else check_bits(args.abits, "--abits")
    if args.method in ("ptq", "qat") and (wbits, abits) != (8, 8):
        raise ConvslimError(f"--method {args.method} produces real int8 (8-bit weights and activations); "
                            f"for {wbits}/{abits} bits use --method lowbit (simulation)")
    return wbits, abits


def _finetune(args, model, method):
    from ..quantization.methods import DEFAULT_EPOCHS, DEFAULT_LR, FineTune

    epochs = DEFAULT_EPOCHS[method] if args.epochs is None else args.epochs
    lr = DEFAULT_LR.get(method, 0.01) if args.lr is None else args.lr
    if not lr > 0:
        raise ConvslimError(f"--lr must be positive, got {lr}")
    return FineTune(epochs, lr=lr, batch_size=args.batch_size, teacher=open_teacher(args, model), seed=args.seed,
                    device=args.device, progress=not args.quiet)


def _kib(n):
    return f"{n / 1024:.1f} KiB"


def _print_int8(res):
    print(f"float top-1 {res['float_top1']:.2f}%  ->  int8 (ONNX Runtime) top-1 {res['top1']:.2f}% "
          f"({res['top1'] - res['float_top1']:+.2f} points)")
    if "sim_top1" in res:
        print(f"convslim fake-quant simulation top-1 {res['sim_top1']:.2f}%"
              + (f" (after PTQ {res['ptq_sim_top1']:.2f}%)" if "ptq_sim_top1" in res else ""))
    rr = "on (CPU without VNNI)" if res["reduce_range"] and not res["vnni"] else str(res["reduce_range"])
    print(f"calibration {res['calibration']} ({res['engine']}) on {res['calibration_images']} images; "
          f"QDQ, weights int8 per channel, activations uint8 per tensor, reduce_range {rr}")
    print(f"size: fp32 ONNX {_kib(res['fp32_onnx_bytes'])} -> int8 ONNX {_kib(res['int8_onnx_bytes'])} "
          f"({res['size_ratio']:.2f}x smaller; the weights alone {_kib(res['fp32_weight_bytes'])} -> "
          f"{_kib(res['int8_weight_bytes'])}, {res['fp32_weight_bytes'] / res['int8_weight_bytes']:.2f}x)")
    for key in res.get("fp32_latency_ms", {}):
        f, q = res["fp32_latency_ms"][key], res["int8_latency_ms"][key]
        verdict = "faster" if q < f else "NOT faster on this CPU"
        threads = res.get("latency_threads") or "default"
        print(f"ONNX Runtime latency {key.replace('_ms', '')} ({threads} thread(s)): fp32 {f:.3f} ms, int8 {q:.3f} ms "
              f"({f / q:.2f}x, int8 {verdict})")


def _print_coded(res):
    print(f"float top-1 {res['float_top1']:.2f}%  ->  {res['method']} top-1 {res['top1']:.2f}% "
          f"({res['top1'] - res['float_top1']:+.2f} points)")
    for key, what in (("ptq_top1", "before fine-tuning"), ("before_finetune_top1", "before fine-tuning"),
                      ("weights_only_top1", "stored weights alone, float activations")):
        if key in res and (key != "ptq_top1" or res.get("finetune")):
            print(f"  {what}: {res[key]:.2f}%")
    print(f"size: fp32 weights {_kib(res['fp32_bytes'])} -> codes {_kib(res['packed_bytes'])} fixed width, "
          f"{_kib(res['huffman_bytes'])} Huffman ({res['size_ratio']:.2f}x smaller)")


def _write_model(sim, out, args, res):
    from ..checkpoint import record_of, save
    from ..quantization.storage import decode_model, save_compressed

    meta = {k: v for k, v in res.items() if isinstance(v, (int, float, str, bool)) or v is None}
    if out.suffix == ".csz":
        record_of(sim).meta["quantization"] = meta
        save_compressed(sim, out)
    else:
        save(decode_model(sim), out, quantization=meta)   # what was scored, input transforms included
    print(f"wrote {out} ({_kib(Path(out).stat().st_size)})")


def cmd_quantize(args):
    from ..quantization import methods
    from ..quantization.calibration import check_method
    from ..quantization.quantizers import weight_spec

    wbits, abits = _bits(args)
    check_method(args.calibration)
    if args.method == "lowbit":
        weight_spec(wbits, scheme=args.scheme, granularity=args.granularity)
    out = _check_out(args, (".onnx",) if args.method in ("ptq", "qat") else (".csz", ".pt"))
    model, splits = open_model_and_data(args)
    calib = dict(calibration=args.calibration, calib_images=args.calib_images, percentile=args.percentile,
                 seed=args.seed)
    latency = dict(latency_batches=() if args.no_latency else tuple(args.latency_batch), latency_threads=args.threads)
    if args.method == "ptq":
        res = methods.ptq(model, splits, out, engine=args.engine, **latency, **calib)
    elif args.method == "qat":
        res = methods.qat(model, splits, out, finetune=_finetune(args, model, "qat"), engine=args.engine,
                          **latency, **calib)
    else:
        ft = _finetune(args, model, args.method)
        if args.method == "lowbit":
            sim, res = methods.lowbit(model, splits, wbits=wbits, abits=None if args.float_activations else abits,
                                      scheme=args.scheme, granularity=args.granularity, finetune=ft, **calib)
        elif args.method == "binary":
            sim, res = methods.binary(model, splits, stochastic=args.stochastic, xnor=args.xnor,
                                      all_layers=args.all_layers, finetune=ft, seed=args.seed)
        elif args.method == "ternary":
            sim, res = methods.ternary(model, splits, all_layers=args.all_layers, finetune=ft, seed=args.seed)
        else:
            sim, res = methods.cluster(model, splits, clusters=args.clusters or 16, finetune=ft, seed=args.seed)
        _print_coded(res)
        _write_model(sim, out, args, res)
    if args.method in ("ptq", "qat"):
        _print_int8(res)
        print(f"wrote {out}")
    if args.json:
        write_json(args, args.json, res)
        print(f"wrote {args.json}")


def cmd_compress(args):
    from ..checkpoint import save
    from ..quantization.pipeline import deep_compression, parse_pipeline
    from ..quantization.storage import save_compressed

    stages = parse_pipeline(args.pipeline)
    if args.cr == 0:
        raise ConvslimError(f"--cr must be in (0, 1], got {args.cr}")
    out = _check_out(args, (".csz",) if "cluster" in stages else (".pt",))
    model, splits = open_model_and_data(args)
    final, rows, info = deep_compression(model, splits, stages, cr=args.cr, clusters=args.clusters,
                                         epochs=args.epochs, lr=args.lr, teacher=open_teacher(args, model),
                                         seed=args.seed, progress=not args.quiet)
    print(f"{'stage':<18} {'params':>10} {'size':>12} {'smaller by':>10} {'top-1 %':>8}")
    for r in rows:
        print(f"{r['stage']:<18} {r['params']:>10,} {_kib(r['bytes']):>12} {r['ratio']:>9.2f}x {r['top1']:>8.2f}")
    if "cluster" in stages:
        save_compressed(final, out, coding="huffman" if "huffman" in stages else "packed")
    else:
        save(final, out, compress=info)
    print(f"wrote {out} ({_kib(Path(out).stat().st_size)})")
    if args.json:
        write_json(args, args.json, {"rows": rows, **info})
        print(f"wrote {args.json}")


def cmd_decompress(args):
    from ..checkpoint import save
    from ..quantization.storage import load_compressed

    out = Path(args.out)
    if out.suffix != ".pt":
        raise ConvslimError(f"--out must end in .pt, got {out.name}")
    model = load_compressed(args.model)
    save(model, out)
    print(f"decoded {args.model} -> {out} ({_kib(out.stat().st_size)})")


def _common(p):
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--epochs", type=non_negative, help="fine-tuning epochs (default per method: qat 3, binary and "
                   "ternary 10, cluster 3, ptq and lowbit 0)")
    p.add_argument("--lr", type=positive, help="fine-tuning learning rate (default 0.01)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--teacher", help="distil from this saved .pt while fine-tuning, or 'original'")
    p.add_argument("--device", default="auto", help="fine-tuning device: auto, cpu, cuda")
    p.add_argument("--json", help="write every figure to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register(sub):
    p = sub.add_parser("quantize", help="int8 (ONNX Runtime), low-bit simulation, binary, ternary, k-means")
    _common(p)
    p.add_argument("--method", choices=METHODS, default="ptq")
    p.add_argument("--bits", type=int, help="weights and activations bits, 2..8 (default 8 for ptq/qat, 4 lowbit)")
    p.add_argument("--wbits", type=int, help="weight bits (overrides --bits)")
    p.add_argument("--abits", type=int, help="activation bits (overrides --bits)")
    p.add_argument("--float-activations", action="store_true", help="lowbit: quantize weights only")
    p.add_argument("--scheme", default="symmetric", help="weights: symmetric or asymmetric (lowbit)")
    p.add_argument("--granularity", default="channel", help="weights: tensor or channel (lowbit)")
    p.add_argument("--calibration", default="minmax", help="activation ranges: minmax, percentile or kl")
    p.add_argument("--percentile", type=float_range(50, 100, lo_open=True), default=99.99, help="for --calibration percentile")
    p.add_argument("--calib-images", type=positive_int, default=512, help="training images for calibration")
    p.add_argument("--engine", choices=["convslim", "ort"], default="convslim",
                   help="int8 calibration by convslim's calibrators or ONNX Runtime's own")
    p.add_argument("--clusters", type=int_range(2, 256), help="k-means clusters per layer, 2 to 256 (default 16)")
    p.add_argument("--stochastic", action="store_true", help="binary: stochastic binarisation while training")
    p.add_argument("--xnor", action="store_true", help="binary: binarise layer inputs too (XNOR-Net)")
    p.add_argument("--all-layers", action="store_true", help="binary/ternary: also the first and last layer")
    p.add_argument("--no-latency", action="store_true", help="skip ONNX Runtime latency")
    p.add_argument("--latency-batch", type=batch_list, default=[1, 64], metavar="B[,B...]",
                   help="ptq/qat: batch sizes fp32 and int8 are timed at (default 1,64)")
    p.add_argument("--threads", type=int_range(1), default=1, help="ptq/qat: ONNX Runtime threads when timing (default 1)")
    p.add_argument("--out", required=True, help=".onnx for ptq/qat; .csz (coded) or .pt (baked) otherwise")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("compress", help="Deep Compression: prune, cluster, Huffman; size at each stage")
    _common(p)
    p.set_defaults(epochs=3)
    p.add_argument("--pipeline", default="prune,cluster,huffman")
    p.add_argument("--cr", type=fraction, default=0.9, help="prune stage: cumulative contribution rate kept")
    p.add_argument("--clusters", type=int_range(2, 256), default=16)
    p.add_argument("--out", required=True, help=".csz when clustering, else .pt")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="decode a .csz back to a plain .pt checkpoint")
    p.add_argument("--model", required=True, help="the compressed .csz file")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_decompress)
