"""Issue 12's table, "auto against the oracle": how much of the compression a model can bear does
each search find within its accuracy budget, and at what cost in epochs?

The oracle: every cr of a grid (step 0.05) pruned from the base, given the same final fine-tune as
auto's final model, and accepted when its validation score is within the budget; the oracle's
answer is the most compressed accepted point (its test change is reported too). Against it: the
thesis's bisection and the progressive search (and the calibrated one), each run as `auto_prune` with
the same final fine-tune, several seeds. Every run is cached in results/auto_oracle/<model>.json as it
finishes; a stopped run resumes. Run from benchmarks/:

    python auto_oracle.py --model digits --seeds 0,1,2              # the demo's model: width 2
    python auto_oracle.py --model ../../shared/bases/resnet20-cifar10-70ep.pt --final-epochs 5 --probe-epochs 0.5
    python auto_oracle.py --model ../../shared/bases/resnet20-cifar10-70ep.pt --final-epochs 2 --probe-epochs 0.2 \
        --seeds 0 --min-cr 0.5 --batch-size 128           # the CPU's short-budget row
    python auto_oracle.py --render
"""
import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import convslim
from convslim.binding import data_for
from convslim.budget import SearchConfig, flops_params, recover, task_for
from convslim.checkpoint import example_input
from convslim.data import load_data
from convslim.fileio import write_text_atomic
from convslim.metrics import count
from convslim.pruning.prune import apply_rule, channel_importance
from convslim.train import TrainConfig, evaluate, fit
from common import CIFAR, RESULTS, RunCache, markdown_table

CACHE = RESULTS / "auto_oracle"
STEPS = CACHE / "steps"        # each finished search's step log: how it decided, read by the gap table
SEARCHES = ("thesis", "progressive", "verified", "calibrated", "thesis+distill", "progressive+distill", "calibrated+distill",
            "verified+distill")


def Cache(name):
    return RunCache(CACHE / f"{name}.json", "auto_oracle.py")


def base_model(spec, args):
    """digits: a digits_resnet of --width trained as the demo trains it (15 epochs) once, and kept in
    checkpoints/ (committed: a training on other threads gives another model, and every row of a
    table must start from the same one); else a saved .pt."""
    if spec == "digits":
        splits = load_data("digits", seed=0, val_fraction=args.val_fraction)
        name = f"digits-w{args.width:g}-val{args.val_fraction:g}"
        path = Path(__file__).resolve().parent / "checkpoints" / f"{name}.pt"
        if not path.exists():
            import torch
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            model = convslim.build_model("digits_resnet", num_classes=10, in_channels=1, input_shape=[1, 8, 8],
                                         width=args.width)
            fit(model, splits, TrainConfig(epochs=15, lr=0.05, batch_size=64, progress=False, device="cpu"))
            convslim.save(model, path)
        return convslim.load(path), splits, name
    model = convslim.load(spec)
    return model, data_for(model, f"cifar10:{CIFAR}"), Path(spec).stem


def same_base(cache, base_val):
    """Refuse to add rows to a cache whose rows started from another base model (their base reads
    differently on validation; a GPU may read a few images differently, 0.05 points on CIFAR's 5000):
    a table compares searches on one model."""
    other = sorted({round(r["base_val"], 3) for r in cache.runs.values() if abs(r["base_val"] - base_val) > 0.05})
    if other:
        raise SystemExit(f"{cache.path} holds rows made on another base model (validation {other} against this "
                         f"base's {base_val:.3f}); move them aside or run on that base")


def run_oracle(model, splits, name, args, cache, seed):
    """The grid. With --distill its fine-tunes distil from the original, as a distilling search's
    final fine-tune does (the same final fine-tune for both: issue 12's definition)."""
    imp = channel_importance(model, splits, seed=0)
    base_val = evaluate(model, splits, "val")["top1"]
    kind = "oracle+distill" if args.distill else "oracle"
    teacher = copy.deepcopy(model).eval() if args.distill else None
    for i in range(19, 0, -1):                         # mild to hard: a stopped grid has its relevant end
        cr = round(i * 0.05, 2)
        if not args.min_cr <= cr <= args.max_cr:
            continue
        key = f"{kind}|cr {cr:.2f}|seed {seed}"
        if key in cache.runs:
            continue
        t0 = time.perf_counter()
        slim, _ = apply_rule(model, imp, "cr", cr)
        cfg = SearchConfig(probe_epochs=0, lr=args.lr, batch_size=args.batch_size, seed=seed, device=args.device)
        task = task_for(splits, cfg)
        recover(slim, task, cfg)
        task.tune(slim, args.final_epochs, teacher)   # convslim's trainer, distilling when there is a teacher
        val, test = evaluate(slim, splits, "val")["top1"], evaluate(slim, splits, "test")["top1"]
        cache.put(key, {"kind": kind, "cr": cr, "seed": seed, "val": val, "test": test, "base_val": base_val,
                        "accepted": val + args.max_acc_loss >= base_val, "epochs": args.final_epochs,
                        "seconds": time.perf_counter() - t0,
                        **flops_params(count(model, example_input(model)), count(slim, example_input(slim)))})


def run_search(model, splits, name, args, cache, search, seed):
    verify = f"|verify {args.verify_epochs:g}" if args.verify_epochs is not None and search == "calibrated" else ""
    key = f"{search}{'+distill' if args.distill else ''}|probe {args.probe_epochs:g}{verify}|seed {seed}"
    if key in cache.runs:
        return
    cfg = SearchConfig(max_acc_loss=args.max_acc_loss, probe_epochs=args.probe_epochs, final_epochs=args.final_epochs,
                       lr=args.lr, batch_size=args.batch_size, seed=seed, device=args.device, search=search,
                       distill=args.distill, verify_epochs=args.verify_epochs)
    t0 = time.perf_counter()
    logs = Path(__file__).resolve().parents[1] / "runs" / "auto_oracle"     # step logs: a stopped search resumes
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}-final{args.final_epochs:g}-{key.replace('|', '-').replace(' ', '')}.json"
    _, s = convslim.auto_prune(model, splits, cfg, progress=False, log_path=log)
    STEPS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(STEPS / log.name, log.read_text())
    cache.put(key, {"kind": search + ("+distill" if args.distill else ""), "seed": seed, "probe_epochs": args.probe_epochs,
                    **({"verify_epochs": args.verify_epochs} if verify else {}), "val": s["final_val_acc"],
                    "base_val": s["base_val_acc"], "test": s["test_acc"], "base_test": s["base_test_acc"],
                    "flops_reduction": s["flops_reduction"], "search_epochs": s["search_epochs"],
                    "final_epochs": s["final_epochs"], "seconds": time.perf_counter() - t0})


def span(values, fmt="{:.1f}"):
    values = list(values)
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def render():
    lines = ["## 8. auto against the oracle (issue 12)\n",
             "The **oracle**: every cr in 0.05..0.95 (step 0.05; from 0.5 on the CPU's CIFAR rows) pruned from the base, BatchNorm re-estimated and given "
             "the same final fine-tune as auto's final model, accepted when its validation score is within the budget "
             "(1 point); its answer is the most compressed accepted point. Where validation is small, a lucky reading "
             "can accept a point whose milder neighbours fail, so the **steady oracle** (the most compressed point with "
             "every milder grid point accepted too) is shown beside it. Against them, `auto` with the thesis's "
             "bisection and with the progressive search. Cells: mean [min, max] over seeds (the seed of the fine-tunes "
             "and, for the oracle, of its fine-tunes too). Share of oracle = the search's FLOPs reduction over the "
             "oracle's, per seed, against the oracle given the same final fine-tune: the distilling searches' (--distill) "
             "against the **distilling oracle** (its grid fine-tuned by distillation from the original) where that grid "
             "was run; † marks a share taken against the plain grid because it was not (the distilling grid may accept "
             "more, so such a share can be too high). Epochs: the search's own, then the final fine-tune's.\n"]
    for path in sorted(CACHE.glob("*.json")):
        data = json.loads(path.read_text())
        runs = list(data["runs"].values())
        seeds = sorted({r["seed"] for r in runs})
        oracles, rows = {}, []
        for kind, label in (("oracle", ""), ("oracle+distill", ", distilling fine-tune")):
            oracle, steady = grid_answers(runs, kind, seeds)
            oracles[kind] = oracle
            if oracle:
                o = list(oracle.values())
                rows.append([f"oracle{label} (grid, step 0.05)", len(o), span(r["flops_reduction"] for r in o),
                             span((r["test"] - base_test(runs) for r in o), "{:+.2f}"), "100%",
                             f"{sum(r['epochs'] for r in runs if r['kind'] == kind and r['seed'] == min(oracle)):g} (grid) + 0",
                             machines([r for r in runs if r["kind"] == kind], data)])
            if steady:
                st = list(steady.values())
                rows.append([f"steady oracle{label} (every milder grid point accepted too)", len(st),
                             span(r["flops_reduction"] for r in st), span((r["test"] - base_test(runs) for r in st), "{:+.2f}"),
                             span((100 * r["flops_reduction"] / oracle[r["seed"]]["flops_reduction"] for r in st), "{:.0f}%"),
                             "(same grid)", ""])
        for search in SEARCHES:
            for probe, verify in sorted({(r.get("probe_epochs"), r.get("verify_epochs", 0)) for r in runs if r["kind"] == search}):
                rs = [r for r in runs if r["kind"] == search and r["probe_epochs"] == probe
                      and r.get("verify_epochs", 0) == verify]
                same = oracles["oracle+distill"] if "+distill" in search else oracles["oracle"]
                mark = "" if all(r["seed"] in same for r in rs) else " †"   # against the plain grid
                oracle = {**oracles["oracle"], **same}
                share = [r["flops_reduction"] / oracle[r["seed"]]["flops_reduction"] for r in rs
                         if r["seed"] in oracle and oracle[r["seed"]]["flops_reduction"] > 0]
                rows.append([f"auto --search {search.replace('+distill', ' --distill')} (probe {probe:g} epochs"
                             f"{f', verifications {verify:.3g}' if verify else ''})", len(rs),
                             span(r["flops_reduction"] for r in rs), span((r["test"] - r["base_test"] for r in rs), "{:+.2f}"),
                             span((100 * x for x in share), "{:.0f}%") + mark + (
                                 f" ({len(share)} of {len(rs)} seeds have a grid)" if len(share) < len(rs) else "")
                             if share else "-",
                             f"{span((r['search_epochs'] for r in rs), '{:.3g}')} + {rs[0]['final_epochs']:g}",
                             machines(rs, data)])
        lines.append(f"### {path.stem}\n")
        lines.append(markdown_table(["method", "seeds", "FLOPs reduction %", "test change (points)", "share of oracle",
                                     "epochs (search + final)", "machine"], rows))
        lines.append("\nMade by (in benchmarks/):\n\n" + "\n".join(f"    {c}" for c in data["commands"]) + "\n")
        lines.extend(resolution(runs, oracles))
        lines.extend(gap_table(path.stem, runs))
    md = "\n".join(lines)
    (RESULTS / "auto_oracle.md").write_text(md + "\n")
    print(md)


def grid_answers(runs, kind, seeds):
    """Per seed, the grid's answer (its most compressed accepted point) and the steady answer (the
    most compressed point with every milder point accepted too)."""
    oracle, steady = {}, {}
    for seed in seeds:
        grid = sorted((r for r in runs if r["kind"] == kind and r["seed"] == seed), key=lambda r: -r["cr"])
        accepted = [r for r in grid if r["accepted"]]
        if accepted:
            oracle[seed] = max(accepted, key=lambda r: r["flops_reduction"])
        for r in grid:
            if not r["accepted"]:
                break
            steady[seed] = r
    return oracle, steady


def resolution(runs, oracles):
    """How finely validation can place an answer: the same grid point fine-tuned with other seeds
    reads differently, while 90% of the oracle's FLOPs reduction is a narrow window below it."""
    out = []
    for kind, oracle in oracles.items():
        by_cr = {}
        for r in runs:
            if r["kind"] == kind:
                by_cr.setdefault(r["cr"], []).append(r["val"])
        spreads = [max(v) - min(v) for v in by_cr.values() if len(v) > 1]
        if not spreads or not oracle:
            continue
        answers = sorted(oracle.values(), key=lambda r: r["seed"])
        tests = ", ".join(f"{r['test'] - base_test(runs):+.2f}" for r in answers)
        windows = ", ".join(f"{0.9 * r['flops_reduction']:.1f}-{r['flops_reduction']:.1f}%" for r in answers)
        out.append(f"\nResolution ({kind} grid): a grid point fine-tuned with another seed reads "
                   f"{statistics.median(spreads):.2f} points apart on validation (median over {len(spreads)} points; "
                   f"at most {max(spreads):.2f}). The oracle's answers end {tests} on test (seeds "
                   f"{', '.join(str(r['seed']) for r in answers)}); 90% of the oracle is a search landing in "
                   f"{windows} fewer FLOPs.\n")
    return out


def gap_table(stem, runs):
    """What a short probe says against what the final fine-tune gives, at the same cr: the thesis
    search's probes (its step log) beside the oracle grid's final readings, interpolated in cr.
    Damage is counted from the paired control (the original after the same short fine-tune, from
    the progressive search's first step) for the probe, and from the original for the final."""
    out = []
    for log in sorted(STEPS.glob(f"{stem}-thesis-probe*-seed*.json")):
        seed = int(log.stem.rsplit("seed", 1)[1])
        grid = sorted((r["cr"], r["val"]) for r in runs if r["kind"] == "oracle" and r["seed"] == seed)
        steps = json.loads(log.read_text())
        base = steps["header"]["base_val_acc"]
        firsts = [json.loads(p.read_text())["probes"][0]
                  for p in sorted(STEPS.glob(f"{stem}-progressive-probe*-seed{seed}.json"))]
        control = firsts[0].get("start_read", firsts[0]["start_val_acc"]) if firsts else None   # as read
        rows = []
        for p in steps["probes"]:
            cr = p["cr"]
            near = [(a, b) for a, b in zip(grid, grid[1:]) if a[0] <= cr <= b[0]]
            if not near or control is None:
                continue
            (c0, v0), (c1, v1) = near[0]
            final = v0 + (v1 - v0) * (cr - c0) / (c1 - c0) if c1 > c0 else v0
            probe_cost, final_cost = control - p["val_acc"], base - final
            rows.append([f"{cr:.3f}", f"{p['val_acc']:.2f}", f"{probe_cost:+.2f}", f"{final:.2f}", f"{final_cost:+.2f}",
                         f"{final_cost / probe_cost:.2f}" if probe_cost > 0.2 else "-"])
        if rows:
            out.append(f"\nProbe against final ({log.stem}): validation base {base:.2f}, paired control "
                       f"{control:.2f} (the original after the probe's fine-tune); final = the oracle grid's readings "
                       "after the final fine-tune, interpolated in cr. Ratio = final damage / probe damage.\n")
            out.append(markdown_table(["cr", "probe val", "probe damage (vs control)", "final val (grid)",
                                       "final damage (vs base)", "ratio"], rows))
    return out


def search_names(text):
    """--searches: comma-separated names of convslim's searches; empty runs the grid alone."""
    names = [x for x in text.split(",") if x]
    bad = [x for x in names if x not in SEARCHES or "+" in x]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown search {bad[0]!r}: give thesis, progressive, verified or "
                                         "calibrated (--distill adds the teacher)")
    return names


def machines(records, data):
    """Where the records ran: 'CPU', 'H200' (merge_rows.py marks runs made on another machine)."""
    def short(m):
        return next((w for w in str(m).replace(",", " ").split() if w[:1] in "HAL" and w[1:].isdigit()), "GPU") if "NVIDIA" in str(m) else "CPU"
    return ", ".join(sorted({short(r.get("machine") or data.get("machine", {}).get("gpu")) for r in records}))


def base_test(runs):
    tests = [r["base_test"] for r in runs if "base_test" in r]
    return tests[0] if tests else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="digits, or a saved .pt trained on CIFAR-10")
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--searches", type=search_names, default=["thesis", "progressive"],
                    help="comma-separated; empty runs the oracle grid alone")
    ap.add_argument("--probe-epochs", type=float, default=1.0)
    ap.add_argument("--final-epochs", type=float, default=10.0)
    ap.add_argument("--max-acc-loss", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--val-fraction", type=float, default=0.25, help="digits: validation share of train")
    ap.add_argument("--width", type=float, default=2.0, help="digits: width of the digits_resnet")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--min-cr", type=float, default=0.0,
                    help="oracle grid starts here (a CPU budget: points far beyond the budget are skipped)")
    ap.add_argument("--max-cr", type=float, default=1.0,
                    help="oracle grid ends here (one grid split over processes side by side)")
    ap.add_argument("--distill", action="store_true", help="searches distil from the original (steps and final)")
    ap.add_argument("--verify-epochs", type=float, default=None,
                    help="calibrated: fine-tune per verification (default: convslim's, a quarter of the final)")
    args = ap.parse_args()
    if args.verify_epochs is not None and not args.verify_epochs > 0:
        ap.error(f"--verify-epochs must be positive, got {args.verify_epochs:g}")
    if args.min_cr > args.max_cr:
        ap.error(f"--min-cr {args.min_cr:g} is above --max-cr {args.max_cr:g}: the grid would be empty")
    if args.render:
        return render()
    model, splits, name = base_model(args.model, args)
    cache = Cache(f"{name}-final{args.final_epochs:g}")
    same_base(cache, evaluate(model, splits, "val")["top1"])
    for seed in args.seeds:
        for search in args.searches:
            run_search(model, splits, name, args, cache, search, seed)
        run_oracle(model, splits, name, args, cache, seed)
    render()


if __name__ == "__main__":
    main()
