"""Issue 15's table: does a pruned model run faster where it is deployed? FLOPs-only pruning,
`--multiple 8`, latency-aware pruning (channel counts snapped with a measured latency table of
ONNX Runtime at batch 1 and 64) and the uniformly thinned model with multiples of 8, each at 2x
and 3x fewer FLOPs, fine-tuned alike; then timed in ONNX Runtime in alternating rounds in one
process, and the measured choice (what `auto --target-flops --latency-aware` returns) also as int8. Every step is cached in
results/latency_pruning/*.json as it finishes, so a stopped run resumes. Run from benchmarks/:

    python latency_pruning.py prune --models ../../shared/bases/resnet20-cifar10-70ep.pt --ft-epochs 1
    python latency_pruning.py time
    python latency_pruning.py render
"""
import argparse
import tempfile
import time
from pathlib import Path

import convslim
from convslim.binding import data_for
from convslim.budget import SearchConfig, flops_params, recover, task_for
from convslim.checkpoint import example_input, record_of
from convslim.latency import LatencyTable, compare_ms, measure_onnx
from convslim.metrics import alternating, count
from convslim.pruning.auto import cr_for_target, fastest_rounding
from convslim.pruning.latency_aware import LatencySnap
from convslim.pruning.prune import apply_rule, channel_importance
from convslim.quantization.methods import int8_onnx
from convslim.train import TrainConfig, evaluate, fit
from common import CIFAR, RESULTS, RunCache, markdown_table

CACHE = RESULTS / "latency_pruning"
MODELS = Path(__file__).resolve().parents[1] / "runs" / "latency_pruning"     # pruned models (not committed)
DATA = f"cifar10:{CIFAR}"
VARIANTS = ("flops only", "multiple 8", "multiple 16", "latency-aware", "measured choice", "uniform x8")
BATCHES = (1, 64)


def Cache(name):
    return RunCache(CACHE / f"{name}.json", "latency_pruning.py")


def flops(model):
    return count(model, example_input(model))["flops"]


def pruned(model, imp, variant, goal, snap):
    """The least pruned model of one variant with at most `goal` FLOPs."""
    if variant == "uniform x8":          # one ratio for every layer, counts rounded up to multiples of 8
        lo, hi = 0.0, 0.99
        for _ in range(16):                # FLOPs fall as the ratio grows: the smallest ratio under the goal
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if flops(apply_rule(model, imp, "ratio", mid, multiple=8)[0]) <= goal else (mid, hi)
        return apply_rule(model, imp, "ratio", hi, multiple=8), hi
    kw = {"multiple 8": {"multiple": 8}, "multiple 16": {"multiple": 16},
          "latency-aware": {"latency": snap}}.get(variant, {})
    cr = cr_for_target(lambda v: flops(apply_rule(model, imp, "cr", v, **kw)[0]), goal)
    return apply_rule(model, imp, "cr", cr, **kw), cr


def cmd_prune(args):
    cache = Cache("runs")
    MODELS.mkdir(parents=True, exist_ok=True)
    for path in args.models.split(","):
        model = convslim.load(path)
        splits, name = data_for(model, args.data), Path(path).stem
        imp = channel_importance(model, splits, seed=0)
        tables = [LatencyTable("ort", b, args.threads, echo=print) for b in BATCHES]
        snap = LatencySnap(model, imp.groups, tables)
        for level in args.levels:
            for variant in args.variants:
                key = f"{name}|{level}x|{variant}"
                if key in cache and (MODELS / cache.runs[key]["file"]).exists():
                    continue                    # done (a model file lost with runs/ is made again, alike)
                t0, extra = time.perf_counter(), {}
                try:
                    if variant == "measured choice":   # what `auto --target-flops --latency-aware` does
                        pcfg = SearchConfig(probe_epochs=args.probe_epochs, lr=args.lr, seed=0, device=args.device)
                        kw, value, roundings = fastest_rounding(model, imp, task_for(splits, pcfg), pcfg, snap,
                                                                "flops", flops(model) / level)
                        slim, kept = apply_rule(model, imp, "cr", value, **kw)   # fresh: tuned as the others are
                        extra = {"roundings": roundings,
                                 "chosen": next(r["rounding"] for r in roundings if r["chosen"])}
                    else:
                        (slim, kept), value = pruned(model, imp, variant, flops(model) / level, snap)
                except convslim.ConvslimError as exc:     # e.g. multiples of 16 cannot reach 3x on resnet20
                    print(f"  {key}: unreachable: {exc}", flush=True)
                    continue
                cfg = SearchConfig(probe_epochs=0, lr=args.lr, seed=0, device=args.device)
                recover(slim, task_for(splits, cfg), cfg)
                fit(slim, splits, TrainConfig(epochs=args.ft_epochs, lr=args.lr, seed=0, device=args.device,
                                              progress=False), validate=False)
                slim.cpu().eval()
                file = MODELS / f"{name}-{level}x-{variant.replace(' ', '_')}.pt"
                convslim.save(slim, file)
                cache.put(key, {"model": name, "base": str(path), "level": level, "variant": variant, "rule_value": value,
                                **flops_params(count(model, example_input(model)), count(slim, example_input(slim))),
                                "kept": kept, "test": evaluate(slim, splits, "test")["top1"],
                                "base_test": evaluate(model, splits, "test")["top1"], "ft_epochs": args.ft_epochs,
                                "seconds": time.perf_counter() - t0, "file": file.name, **extra,
                                "predicted_ms": {b: snap.predict_ms(slim, t) for b, t in zip(BATCHES, tables)}})


def cmd_time(args):
    """Per model and level: the base and every variant in alternating rounds, then int8."""
    runs = Cache("runs").runs
    cache = Cache("timing")
    groups = {}
    for key, r in runs.items():
        groups.setdefault((r["model"], r["level"]), []).append(r)
    for (name, level), rows in sorted(groups.items()):
        key = f"{name}|{level}x"
        if key in cache and not args.redo:
            continue
        base = convslim.load(rows[0]["base"])
        models = [base] + [architecture(base, r) for r in rows]
        shape = record_of(base).input_shape
        record = {"threads": args.threads, "rounds": args.rounds, "variants": [r["variant"] for r in rows]}
        for b in BATCHES:
            ms = compare_ms(models, shape, batch=b, threads=args.threads, repeats=args.repeats if b == 1 else 10,
                            rounds=args.rounds)
            record[f"b{b}"] = {"base": ms[0], **{r["variant"]: m for r, m in zip(rows, ms[1:])}}
        aware = next((r for r in rows if r["variant"] == "measured choice"), None)
        if aware is not None and (MODELS / aware["file"]).exists():
            record["int8"] = int8_row(base, convslim.load(MODELS / aware["file"]), args)
        elif key in cache and "int8" in cache.runs[key]:
            record["int8"] = cache.runs[key]["int8"]        # needs the trained model: kept from its run
        cache.put(key, record)


SCORES = {}          # base path -> its channel importance (which channels go does not change the time)


def architecture(base, row):
    """The pruned model of a row, or, when its file is gone (runs/ is not committed), the same
    architecture pruned again from the base by its recorded channel counts: time depends on the
    shapes, not on the weights, so timing needs no fine-tune."""
    path = MODELS / row["file"]
    if path.exists():
        return convslim.load(path)
    if row["base"] not in SCORES:
        SCORES[row["base"]] = channel_importance(base, data_for(base, DATA), seed=0)
    slim, kept = apply_rule(base, SCORES[row["base"]], "counts", row["kept"])
    assert kept == row["kept"]
    return slim


def int8_row(base, slim, args):
    """Real int8 (ONNX Runtime static quantization) of the base and the measured choice, timed
    against their fp32 files in alternating rounds."""
    splits = data_for(slim, args.data)
    shape = record_of(slim).input_shape
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for label, model in (("base", base), ("measured choice", slim)):
            path = Path(tmp) / f"{label}.int8.onnx"
            res = int8_onnx(model, splits, path, latency_batches=(), simulation=False)
            out[f"{label} int8 test"] = res.get("top1")
            fp32 = Path(tmp) / f"{label}.onnx"
            convslim.export_onnx(model, fp32, shape, verify=False)
            paths[f"{label} fp32"], paths[f"{label} int8"] = fp32, path
        for b in BATCHES:
            ms = alternating([lambda p=p: measure_onnx(p, shape, batch=b, threads=args.threads,
                                                       repeats=args.repeats if b == 1 else 10) for p in paths.values()],
                             args.rounds)
            out[f"b{b}"] = dict(zip(paths, ms))
    return out


def render():
    runs, timing = Cache("runs"), Cache("timing")
    lines = ["## 7. Latency-aware pruning (issue 15)\n",
             "Does a model pruned to 2x or 3x fewer FLOPs run 2x or 3x faster where it is deployed? Each variant is "
             "the least pruned model with at most the target FLOPs (permutation importance, one score for all): "
             "**FLOPs only** (the cr rule), **multiple 8** and **multiple 16** (counts rounded up; 16 floats is this CPU's AVX-512 block), **latency-aware** "
             "(each group's count snapped up to a fast one by a latency table measured on this machine in ONNX "
             "Runtime at batch 1 and 64), **measured choice** (what `auto --target-flops --latency-aware` returns: the "
             "table's snap, multiple 8 and multiple 16 each timed whole and read after 0.1 epoch, the fastest within "
             "1 point of the best reading), and **uniform x8** (one pruning ratio for every layer, "
             "counts multiples of 8). All get BN re-estimation and the same fine-tune. Times: ONNX Runtime on this "
             "CPU, median of alternating rounds in one process (base first in each round), "
             f"{next(iter(timing.runs.values()), {}).get('threads', 1)} thread(s), with the machine's other benchmark "
             "paused while timing; speed-up = base ms / model ms. Where two variants are the same architecture (the "
             "measured choice is one of the roundings), their two rows show how far timings of one model move "
             "between rounds. **Short fine-tune budget** (the epochs column): "
             "accuracy compares variants with each other, not with the literature.\n"]
    headers = ["model", "FLOPs target", "variant", "FLOPs reduction", "test (base)", "ft epochs",
               "b1 ms", "b1 speed-up", "b64 ms", "b64 speed-up", "speed-up / FLOPs ratio (b1, b64)"]
    rows = []
    for key, r in runs.runs.items():
        t = timing.runs.get(f"{r['model']}|{r['level']}x")
        cells = []
        ratio = r["base_flops"] / r["flops"]
        for b in BATCHES:
            if t and r["variant"] in t[f"b{b}"]:
                ms = t[f"b{b}"][r["variant"]]
                cells += [f"{ms:.3f}", f"{t[f'b{b}']['base'] / ms:.2f}x"]
            else:
                cells += ["-", "-"]
        eff = (", ".join(f"{t[f'b{b}']['base'] / t[f'b{b}'][r['variant']] / ratio:.2f}" for b in BATCHES)
               if t and r["variant"] in t["b1"] else "-")
        rows.append([r["model"], f"{r['level']}x", r["variant"], f"{r['flops_reduction']:.1f}%",
                     f"{r['test']:.2f} ({r['base_test']:.2f})", f"{r['ft_epochs']:g}", *cells, eff])
    lines.append(markdown_table(headers, rows) if rows else "Not run yet.")
    int8 = [(k, t["int8"]) for k, t in timing.runs.items() if "int8" in t]
    if int8:
        lines.append("\nint8 (ONNX Runtime static quantization, per-channel weights) of the base and of the "
                     "measured choice, timed against the fp32 files in alternating rounds:\n")
        rows = []
        for key, q in int8:
            for label in ("base", "measured choice"):
                rows.append([key, label, f"{q[f'{label} int8 test']:.2f}" if q.get(f"{label} int8 test") else "-",
                             *[f"{q[f'b{b}'][f'{label} fp32']:.3f} / {q[f'b{b}'][f'{label} int8']:.3f}"
                               for b in BATCHES],
                             *[f"{q[f'b{b}']['base fp32'] / q[f'b{b}'][f'{label} int8']:.2f}x" for b in BATCHES]])
        lines.append(markdown_table(["model, level", "model", "int8 test", "b1 fp32 / int8 ms", "b64 fp32 / int8 ms",
                                     "b1 vs base fp32", "b64 vs base fp32"], rows))
    cmds = runs.commands + [c for c in timing.commands if c not in runs.commands]
    lines.append("\nMade by (in benchmarks/):\n\n" + "\n".join(f"    {c}" for c in cmds))
    md = "\n".join(lines)
    CACHE.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency_pruning.md").write_text(md + "\n")
    print(md)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    for step in ("prune", "time", "render"):
        p = sub.add_parser(step)
        p.add_argument("--data", default=DATA)
        p.add_argument("--threads", type=int, default=1)
        if step == "prune":
            p.add_argument("--models", required=True)
            p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[2, 3])
            p.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
            p.add_argument("--ft-epochs", type=float, default=1.0)
            p.add_argument("--probe-epochs", type=float, default=0.1,
                           help="measured choice: fine-tune per candidate before its reading")
            p.add_argument("--lr", type=float, default=0.01)
            p.add_argument("--device", default="cpu")
        if step == "time":
            p.add_argument("--rounds", type=int, default=5)
            p.add_argument("--repeats", type=int, default=50)
            p.add_argument("--redo", action="store_true")
    args = ap.parse_args()
    if args.step == "render":
        render()
    else:
        globals()[f"cmd_{args.step}"](args)


if __name__ == "__main__":
    main()
