"""`convslim latency`, and the latency options and figures that prune and auto share."""
import argparse

from ..errors import ConvslimError
from .common import (add_data_args, add_model_args, int_range, open_model, open_model_and_data, output_suffix,
                     write_json)


def batch_list(text):
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch sizes such as 1 or 1,64, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1, got {text!r}")
    return values


def add_latency_args(p, aware=True):
    from ..latency import ENGINES

    p.add_argument("--engine", choices=ENGINES, default="ort", help="engine the model is deployed to and timed on")
    p.add_argument("--latency-batch", type=batch_list, default=[1], metavar="B[,B...]",
                   help="batch sizes latency is measured at (default 1)")
    p.add_argument("--threads", type=int_range(1), default=1, help="threads the engine runs with (default 1)")
    if aware:
        p.add_argument("--latency-aware", action="store_true",
                       help="snap each layer's channel count up to one the engine runs fast (a latency table "
                            "measured on this machine, cached)")


def latency_tables(args):
    from ..latency import LatencyTable

    return [LatencyTable(args.engine, b, args.threads, echo=lambda m: print(m, flush=True)) for b in args.latency_batch]


def report_latency(base, slim, args, summary):
    """Measure base and result on the chosen engine, alternating, and print and record the ratios
    next to the FLOPs ratio: a smaller model that runs no faster is shown as such."""
    from ..checkpoint import record_of
    from ..latency import compare_ms

    flops_ratio = summary["base_flops"] / max(summary["flops"], 1)
    if slim is base or (summary["flops"] == summary["base_flops"] and summary.get("pruned") is False):
        print("latency: the model is unchanged, nothing to time")
        return
    rows = []
    for batch in args.latency_batch:
        base_ms, ms = compare_ms([base, slim], record_of(base).input_shape, engine=args.engine, batch=batch,
                                 threads=args.threads, rounds=5)
        rows.append({"engine": args.engine, "batch": batch, "threads": args.threads, "base_ms": base_ms, "ms": ms,
                     "speedup": base_ms / ms})
        speed = f"{base_ms / ms:.2f}x faster" if ms <= base_ms else f"{ms / base_ms:.2f}x SLOWER"
        print(f"latency ({args.engine}, batch {batch}, {args.threads} thread{'s' if args.threads > 1 else ''}): "
              f"{base_ms:.3f} -> {ms:.3f} ms, {speed} at {flops_ratio:.2f}x fewer FLOPs "
              f"(speed-up / FLOPs ratio {base_ms / ms / flops_ratio:.2f})")
    summary.update(latency=rows, flops_ratio=flops_ratio)


def step_edges(curve, jump=0.15):
    """Counts after which the time jumps by more than `jump` (timing noise on a shared machine is
    a few percent): the fast ends of the steps."""
    counts = sorted(curve)
    return [c for c, nxt in zip(counts, counts[1:]) if curve[nxt] > curve[c] * (1 + jump)]


def cmd_latency(args):
    from ..checkpoint import example_input, record_of
    from ..latency import conv_layers, measure_model

    if args.plot:
        output_suffix(args.plot, (".png",), "--plot")
    model = open_model_and_data(args)[0] if args.data else open_model(args)
    model = model.cpu().eval()
    layers = conv_layers(model, example_input(model))
    if not layers:
        raise ConvslimError("the model has no conv layers to time")
    result = {"engine": args.engine, "threads": args.threads, "batches": {}}
    for table in latency_tables(args):
        table.curves(layers.values())
        whole = measure_model(model, record_of(model).input_shape, engine=table.engine, batch=table.batch,
                              threads=table.threads)
        rows = []
        for layer in layers.values():
            full = table.in_network_ms(layer, layer.in_channels, layer.out_channels)
            out, inp = table.curve(layer, "out"), table.curve(layer, "in")
            rows.append({"layer": layer.name, "in": layer.in_channels, "out": layer.out_channels,
                         "input_size": [layer.shape.height, layer.shape.width], "ms": full,
                         "fast_out": step_edges(out), "fast_in": step_edges(inp), "out_curve": out, "in_curve": inp})
        total = sum(r["ms"] for r in rows)
        result["batches"][table.batch] = {"model_ms": whole, "conv_ms": total, "layers": rows,
                                          "cache": str(table.path)}
        print(f"\nbatch {table.batch}: whole model {whole:.3f} ms measured; conv layers {total:.3f} ms from the table")
        print(f"{'layer':<28} {'in->out':>9} {'input':>7} {'ms':>8} {'share':>6}  fast output counts (step ends)")
        for r in sorted(rows, key=lambda r: -r["ms"])[:args.top]:
            edges = ",".join(map(str, r["fast_out"][:10])) + (",..." if len(r["fast_out"]) > 10 else "")
            print(f"{r['layer']:<28} {r['in']:>4}->{r['out']:<4} {'x'.join(map(str, r['input_size'])):>7} "
                  f"{r['ms']:>8.3f} {100 * r['ms'] / total:>5.1f}%  {edges or '-'}")
    if args.plot:
        plot_curves(result, args.plot, args.top_plot)
        print(f"plot: {args.plot}")
    if args.json:
        write_json(args, args.json, result)


def plot_curves(result, path, top):
    """Time against channel count (output and input side) for the slowest layers, per batch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_path

    batches = list(result["batches"].items())
    fig, axes = plt.subplots(len(batches), top, figsize=(3.2 * top, 2.8 * len(batches)), squeeze=False)
    for row, (batch, data) in zip(axes, batches):
        distinct = {}           # layers of one shape and width have one curve: plot it once
        for r in sorted(data["layers"], key=lambda r: -r["ms"]):
            distinct.setdefault((r["in"], r["out"], tuple(r["input_size"]), tuple(r["out_curve"].items())), r)
        worst = list(distinct.values())[:top]
        for ax, r in zip(row, worst):
            for side, style in (("out_curve", "-"), ("in_curve", "--")):
                curve = r[side]
                ax.plot(list(curve), list(curve.values()), style, marker=".", markersize=3,
                        label="output channels" if side == "out_curve" else "input channels")
            ax.set_title(f"{r['layer']} (batch {batch})", fontsize=8)
            ax.set_xlabel("channels", fontsize=8)
            ax.set_ylabel("ms", fontsize=8)
            ax.tick_params(labelsize=7)
        row[0].legend(fontsize=7)
    fig.suptitle(f"{result['engine']}, {result['threads']} thread(s): time against channel count", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def register(sub):
    p = sub.add_parser("latency", help="measure how each conv layer's time steps with its channel count")
    add_model_args(p)
    add_data_args(p)
    add_latency_args(p, aware=False)
    p.add_argument("--top", type=int_range(1), default=8, help="layers listed, slowest first")
    p.add_argument("--top-plot", type=int_range(1), default=4, help="layers plotted")
    p.add_argument("--plot", help="PNG of time against channels for the slowest layers")
    p.add_argument("--json", help="write the table (every measured curve) to this file")
    p.set_defaults(func=cmd_latency)
