"""Issue 4's tables: convslim's pruner against torch-pruning's criteria and the thesis's own tables,
on CIFAR-10, one subcommand per table. Every run is cached in results/pruning/<table>.json as soon
as it finishes (a table can be completed over several runs; done runs are skipped), and `render`
rebuilds benchmarks/RESULTS.md, results/pruning.json and the plots from the caches alone.
Run from benchmarks/ (the model paths below are relative to it):

    python pruning_tables.py base --models ../runs/r20.pt,../runs/vgg16w25.pt
    python pruning_tables.py criteria --model ../runs/r20.pt --levels 50,70 --seeds 0,1
    python pruning_tables.py criteria --model ../../shared/bases/resnet20-cifar10-70ep.pt --levels 50 \
        --seeds 0,1,2 --ft-epochs 5 --cache criteria_recovery --variants "perm expected conv,tp l1,..."
    python pruning_tables.py ablations --model ../runs/vgg16w25.pt
    python pruning_tables.py ablations --model ../../shared/bases/vgg16w05-cifar10-45ep.pt --seeds 0,1 \
        --ft-epochs 5 --cache ablations_recovery         # tables 3-3, 3-4, 4-1 at a real recovery (GPU)
    python pruning_tables.py auto --models ../runs/r20.pt,../runs/vgg16w25.pt
    python pruning_tables.py speed
    python pruning_tables.py render
"""
import argparse
import copy
import json
import sys
import time
from pathlib import Path

import convslim
from convslim.binding import data_for
from convslim.budget import PROBE_EPOCHS, SearchConfig, flops_params, recover, task_for
from convslim.checkpoint import example_input, record_of
from convslim.fileio import write_text_atomic
from convslim.metrics import alternating, count, latency
from convslim.pruning.criteria import PermutationOptions
from convslim.pruning.prune import apply_rule, channel_importance
from convslim.train import TrainConfig, evaluate, fit
from common import CIFAR, RESULTS, git_commit, machine

CACHE = RESULTS / "pruning"
MODELS = Path(__file__).resolve().parents[1] / "runs" / "pruning_tables"   # pruned models (not committed)
DATA = f"cifar10:{CIFAR}"

# name -> (criterion, permutation options); torch-pruning's classes are used for its criteria.
VARIANTS = {
    "perm expected bn": ("permutation", {"estimator": "expected", "measure": "bn"}),
    "perm expected conv": ("permutation", {"estimator": "expected", "measure": "conv"}),
    "perm sampled bn": ("permutation", {"estimator": "sample", "measure": "bn"}),
    "perm sampled conv": ("permutation", {"estimator": "sample", "measure": "conv"}),
    **{f"tp {c}": (c, {}) for c in ("l1", "l2", "fpgm", "bn-scale", "taylor", "lamp", "random")},
    "hrank": ("hrank", {}),
}
THESIS = {  # seed 003, VGG16 on CIFAR-10, base 89.08: accuracy change (accuracy) after pruning + fine-tuning
    "3-3": {"zero": ["+1.00 (90.08)", "+0.62 (89.70)", "-0.07 (89.01)", "-1.76 (87.32)"],
            "reinit": ["+0.90 (89.98)", "+0.74 (89.82)", "-0.13 (88.95)", "-1.71 (87.37)"],
            "shuffle": ["+0.93 (90.01)", "+0.71 (89.79)", "-0.16 (88.92)", "-1.67 (87.41)"]},
    "3-4": {"random": ["+0.46 (89.54)", "+0.15 (89.23)", "-0.51 (88.57)", "-1.87 (87.21)"],
            "data": ["+0.93 (90.01)", "+0.71 (89.79)", "-0.16 (88.92)", "-1.67 (87.41)"]},
    "4-1": [["global ratio 0.2", "+0.50 (89.58)", 31.3, 19.2], ["global ratio 0.7", "+0.01 (89.09)", 88.2, 63.5],
            ["global ratio 0.8", "-1.11 (87.97)", 93.5, 71.8], ["cr 0.8", "+0.96 (90.04)", 43.4, 24.6],
            ["cr 0.4", "+0.27 (89.35)", 86.9, 62.0], ["cr 0.3", "-0.65 (88.43)", 92.2, 69.5]],
    "4-2": {"alexnet": "-0.82 (84.93), 46.9, 27.8", "googlenet": "-0.87 (90.19), 66.2, 49.9",
            "vgg16": "-0.90 (88.18), 90.2, 68.7", "resnet34": "-0.73 (89.37), 86.4, 91.2",
            "resnet50": "-0.94 (87.60), 95.1, 95.7", "densenet121": "-0.33 (86.81), 66.2, 49.9"},
}
RATIOS = (0.2, 0.4, 0.6, 0.8)
TIMED = ("perm expected bn", "tp l1")   # variants whose pruned models the speed table times


class Cache:
    """One table's runs, {key: record}, rewritten atomically after every run."""

    def __init__(self, table):
        self.path = CACHE / f"{table}.json"
        old = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.runs, self.commands = old.get("runs", {}), old.get("commands", [])

    def command(self):
        """The command line of this process, as the rendered table quotes it."""
        line = " ".join(["python pruning_tables.py", *sys.argv[1:]])
        if line not in self.commands:
            self.commands.append(line)

    def __contains__(self, key):
        return key in self.runs

    def put(self, key, record):
        self.runs[key] = record
        self.command()
        CACHE.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps({"machine": machine(), "commit": git_commit(),
                                                 "commands": self.commands, "runs": self.runs}, indent=1))
        shown = ("flops_reduction", "bn_val", "probe_val", "test", "test_acc", "seconds")
        print(f"  {key}: " + ", ".join(f"{k} {record[k]:.2f}" for k in shown if k in record), flush=True)


def open_model(path, data):
    model = convslim.load(path)
    return model, data_for(model, data), Path(path).stem


def counts(model):
    return count(model, example_input(model))


def rule_for_flops(model, imp, rule, target, steps=16):
    """The cr (or global ratio) whose pruned model's FLOPs land closest to `target`: FLOPs are
    counted, nothing is trained, so every criterion is matched to the same compression."""
    lo, hi = 0.0, 1.0
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        flops = counts(apply_rule(model, imp, rule, mid)[0])["flops"]
        if best is None or abs(flops - target) < abs(best[1] - target):
            best = (mid, flops)
        grows = rule == "cr"                     # FLOPs grow with cr and shrink with the ratio
        lo, hi = (mid, hi) if (flops < target) == grows else (lo, mid)
    return best[0]


def finetune(slim, splits, args, seed):
    """BN re-estimation, the proxy probe (copy), then the fine-tune every method shares."""
    cfg = SearchConfig(probe_epochs=0, lr=args.lr, seed=seed, device=args.device)
    t0 = time.perf_counter()
    recover(slim, task_for(splits, cfg), cfg)
    out = {"bn_val": evaluate(slim, splits, "val")["top1"]}
    if args.proxy_epochs > 0 and seed in args.proxy_seeds:   # the search's probe: BN done, then a short fit
        probe = copy.deepcopy(slim)
        fit(probe, splits, cfg.train_config(args.proxy_epochs), validate=False)
        out.update(probe_val=evaluate(probe, splits, "val")["top1"], probe_epochs=args.proxy_epochs)
    fit(slim, splits, TrainConfig(epochs=args.ft_epochs, lr=args.lr, seed=seed, device=args.device, progress=False),
        validate=False)
    slim.cpu().eval()
    out.update(val=evaluate(slim, splits, "val")["top1"], test=evaluate(slim, splits, "test")["top1"],
               seconds=time.perf_counter() - t0, ft_epochs=args.ft_epochs, lr=args.lr)
    return out


def pruned_row(model, slim, kept=None):
    return {**flops_params(counts(model), counts(slim)), **({"kept": kept} if kept else {})}


def cmd_base(args):
    cache = Cache("base")
    for path in args.models.split(","):
        model, splits, name = open_model(path, args.data)
        log_path = Path(path).with_suffix(".train.json")
        log = json.loads(log_path.read_text()) if log_path.exists() else {}
        c = counts(model)
        cache.put(name, {"arch": record_of(model).arch, "test": evaluate(model, splits, "test")["top1"],
                         "val": evaluate(model, splits, "val")["top1"], "params": c["params"], "flops": c["flops"],
                         "recipe": log.get("config", {}), "train_seconds": log.get("seconds"), "path": path})


def cmd_criteria(args):
    cache = Cache(args.cache or "criteria")
    model, splits, name = open_model(args.model, args.data)
    base_flops = counts(model)["flops"]
    for seed in args.seeds:
        for variant in args.variants:
            criterion, opts = VARIANTS[variant]
            keys = [f"{name}|{variant}|{level}|{seed}" for level in args.levels]
            if all(k in cache for k in keys):
                continue
            t0 = time.perf_counter()
            imp = channel_importance(model, splits, criterion=criterion, seed=seed,
                                     options=PermutationOptions(seed=seed, **opts) if opts else None)
            score_s = time.perf_counter() - t0
            for level, key in zip(args.levels, keys):
                if key in cache:
                    continue
                cr = rule_for_flops(model, imp, "cr", base_flops * (1 - level / 100))
                slim, _ = apply_rule(model, imp, "cr", cr)
                rec = {"model": name, "variant": variant, "level": level, "seed": seed, "cr": cr,
                       "score_seconds": score_s, **pruned_row(model, slim), **finetune(slim, splits, args, seed)}
                if seed == args.seeds[0] and variant in TIMED:
                    convslim.save(slim, MODELS / f"{name}-{variant.replace(' ', '_')}-{level}.pt")
                cache.put(key, rec)


def cmd_ablations(args):
    """Tables 3-3, 3-4 and 4-1. The default cache keeps its one-seed keys; a named --cache (the
    real-recovery tables) keys every run by seed and fine-tune too, so seeds add up over runs."""
    cache = Cache(args.cache or "ablations")
    model, splits, name = open_model(args.model, args.data)
    for seed in args.seeds if args.cache else args.seeds[:1]:
        tag = f"|seed {seed}|ft {args.ft_epochs:g}" if args.cache else ""
        ablation_runs(model, splits, name, args, cache, seed, tag)


def ablation_runs(model, splits, name, args, cache, seed, tag):
    thesis_opts = {"estimator": "sample", "measure": "conv"}   # the thesis's own method
    arms = {("zero", "data"): {"3-3"}, ("reinit", "data"): {"3-3"}, ("shuffle", "data"): {"3-3", "3-4"},
            ("shuffle", "random"): {"3-4"}}
    for (perm, inp), tables in arms.items():
        if not tables & set(args.tables):
            continue
        keys = {ratio: f"{name}|{perm}|{inp}|ratio {ratio}{tag}" for ratio in args.ratios}
        if all(k in cache for k in keys.values()):
            continue
        imp = channel_importance(model, splits, seed=seed,
                                 options=PermutationOptions(perm=perm, input=inp, seed=seed, **thesis_opts))
        for ratio, key in keys.items():
            if key not in cache:
                slim, kept = apply_rule(model, imp, "ratio", ratio)
                cache.put(key, {"table": "3-3/3-4", "perm": perm, "input": inp, "ratio": ratio, "seed": seed,
                                **pruned_row(model, slim), **finetune(slim, splits, args, seed)})
    imp = channel_importance(model, splits, seed=seed, options=PermutationOptions(seed=seed))  # convslim default
    for cr in args.crs if "4-1" in args.tables else ():
        key = f"{name}|cr {cr}{tag}"
        slim, kept = apply_rule(model, imp, "cr", cr)
        if key not in cache:
            cache.put(key, {"table": "4-1", "rule": "cr", "value": cr, "seed": seed, **pruned_row(model, slim, kept),
                            **finetune(slim, splits, args, seed)})
        gkey = f"{name}|global matching cr {cr}{tag}"
        if gkey not in cache:
            ratio = rule_for_flops(model, imp, "ratio", counts(slim)["flops"])
            gslim, gkept = apply_rule(model, imp, "ratio", ratio)
            cache.put(gkey, {"table": "4-1", "rule": "global ratio", "value": ratio, "matches_cr": cr, "seed": seed,
                             **pruned_row(model, gslim, gkept), **finetune(gslim, splits, args, seed)})
    for cr in (1.0, 0.9, 0.8, 0.6, 0.4, 0.3):
        cache.put(f"{name}|fig 4-4 cr {cr}{tag}", {"table": "fig 4-4", "cr": cr,
                                                    "kept": apply_rule(model, imp, "cr", cr)[1]})


def cmd_auto(args):
    cache = Cache("auto")
    for path in args.models.split(","):
        model, splits, name = open_model(path, args.data)
        key = f"{name}|probe {args.probe_epochs:g}|final {args.final_epochs:g}"
        if key in cache:
            continue
        cfg = SearchConfig(max_acc_loss=1.0, min_interval=0.01, probe_epochs=args.probe_epochs,
                           final_epochs=args.final_epochs, lr=args.lr, device=args.device,
                           search="thesis")                   # table 4 is the thesis's search (4-2)
        slim, s = convslim.auto_prune(model, splits, cfg, model_id=name)
        pruned = f"{name}-auto-probe{args.probe_epochs:g}.pt"
        convslim.save(slim, MODELS / pruned)
        cache.put(key, {"model": name, "arch": record_of(model).arch["model"], "probe_epochs": args.probe_epochs,
                        "final_epochs": args.final_epochs, "pruned": pruned,
                        **{k: v for k, v in s.items() if k not in ("base_channels",)}})


def interleaved_latency(models, shape, repeats, rounds):
    """Each model's latency as the median over `rounds` alternating rounds, so a slow spell on a
    shared CPU hits base and pruned alike."""
    return alternating([lambda m=m: latency(m, shape, repeats=repeats) for m in models], rounds)


def cmd_speed(args):
    """Latency of each saved pruned model against its base, same process, interleaved."""
    cache = Cache("speed")
    base = Cache("base").runs
    for pruned in sorted(MODELS.glob("*.pt")):
        name = next((b for b in base if pruned.stem.startswith(b + "-")), None)
        if name is None or (pruned.stem in cache and not args.redo):
            continue
        model, slim = convslim.load(base[name]["path"]), convslim.load(pruned)
        shape = record_of(model).input_shape
        lat_base, lat_slim = interleaved_latency((model, slim), shape, args.repeats, args.rounds)
        cache.put(pruned.stem, {"base": name, **pruned_row(model, slim), "base_latency": lat_base, "latency": lat_slim})


def ratio_list(text):
    try:
        ratios = [float(x) for x in text.split(",")]
    except ValueError:
        ratios = []
    if not ratios or not all(0 < r < 1 for r in ratios):
        raise argparse.ArgumentTypeError(f"ratios are numbers between 0 and 1, comma-separated; got {text!r}")
    return ratios


def table_list(text):
    tables = [t.strip() for t in text.split(",") if t.strip()]
    if not tables or set(tables) - {"3-3", "3-4", "4-1"}:
        raise argparse.ArgumentTypeError(f"tables are 3-3, 3-4 and 4-1, comma-separated; got {text!r}")
    return tables


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="table", required=True)
    for table in ("base", "criteria", "ablations", "auto", "speed", "render"):
        p = sub.add_parser(table)
        p.add_argument("--device", default="auto")
        p.add_argument("--data", default=DATA)
        p.add_argument("--lr", type=float, default=0.01)
        if table in ("base", "auto"):
            p.add_argument("--models", required=True)
        if table in ("criteria", "ablations"):
            p.add_argument("--model", required=True)
            p.add_argument("--ft-epochs", type=float, default=0.3, help="fine-tune every method gets")
            p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
            p.add_argument("--proxy-epochs", type=float, default=0.0, help="probe budget of the recovery proxy")
            p.add_argument("--proxy-seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
            p.add_argument("--cache", help=f"cache table name (default {table}); a real-recovery table "
                                            "keeps its runs apart from the short-budget one")
        if table == "criteria":
            p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[50, 70])
            p.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
        if table == "ablations":
            p.add_argument("--crs", type=lambda s: [float(x) for x in s.split(",")], default=[0.9, 0.8, 0.6, 0.4])
            p.add_argument("--ratios", type=ratio_list, default=list(RATIOS),
                           help="the per-layer ratios of tables 3-3 and 3-4 (one ratio at a time on a slow machine)")
            p.add_argument("--tables", type=table_list, default=["3-3", "3-4", "4-1"],
                           help="which of the thesis's tables to run (4-1 alone first on a slow machine)")
        if table == "auto":
            p.add_argument("--probe-epochs", type=float, default=PROBE_EPOCHS)
            p.add_argument("--final-epochs", type=float, default=3.0)
        if table == "speed":
            p.add_argument("--repeats", type=int, default=30)
            p.add_argument("--rounds", type=int, default=3, help="alternating base/pruned rounds")
            p.add_argument("--redo", action="store_true")
    args = ap.parse_args()
    if getattr(args, "variants", None):
        unknown = set(args.variants) - set(VARIANTS)
        if unknown:
            sys.exit(f"pruning_tables: error: unknown variant(s) {', '.join(sorted(unknown))}")
    if args.table == "render":
        from pruning_render import render
        render()
    else:
        MODELS.mkdir(parents=True, exist_ok=True)
        globals()[f"cmd_{args.table}"](args)


if __name__ == "__main__":
    main()
