"""Rebuild benchmarks/RESULTS.md, results/pruning.json and the plots from the cached runs of
pruning_tables.py alone (nothing is recomputed)."""
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from common import RESULTS, git_commit, machine, markdown_table  # noqa: E402
from pruning_tables import CACHE, RATIOS, THESIS  # noqa: E402

OUT = Path(__file__).resolve().parent / "RESULTS.md"
FIGS = RESULTS / "pruning"
FINDINGS = FIGS / "findings.md"   # hand-written reading of the tables, quoted at the top
CMD = "python pruning_tables.py"


def load(table):
    path = CACHE / f"{table}.json"
    return json.loads(path.read_text())["runs"] if path.exists() else {}


def commands(table):
    """How the table's cached runs were made, as a Markdown list."""
    path = CACHE / f"{table}.json"
    lines = json.loads(path.read_text()).get("commands", []) if path.exists() else []
    lines = [c.replace("python benchmarks/pruning_tables.py", "python pruning_tables.py") for c in lines]
    return "Made by (in benchmarks/):\n\n" + "\n".join(f"    {c}" for c in lines) + "\n\n" if lines else ""


def change(acc, base):
    return f"{acc - base:+.2f} ({acc:.2f})"


def base_tables(base):
    rows = [[name, f"{r['arch']['model']} x{r['arch'].get('width', 1.0):g}", f"{r['params'] / 1e6:.3f} M",
             f"{r['flops'] / 1e6:.1f} M", f"{r['test']:.2f}", f"{r['val']:.2f}",
             "{epochs:g} epochs, SGD lr {lr:g} {schedule}, batch {batch_size}".format(**r["recipe"]) if r["recipe"] else "?",
             f"{r['train_seconds']:.0f}" if r["train_seconds"] else "?"] for name, r in base.items()]
    return ("## 1. Base models\n\nTrained by `convslim train` (the commands are in benchmarks/README.md); "
            "validation is 10% of the training set, held out, and test is CIFAR-10's own test set.\n\n"
            + commands("base")
            + markdown_table(["model", "architecture", "params", "FLOPs", "test top-1 %", "val top-1 %", "recipe",
                              "train seconds"], rows))


def criteria_table(runs, base, table="criteria"):
    if not runs:
        return "Not run yet.", {}
    groups = defaultdict(list)
    for r in runs.values():
        groups[(r["model"], r["level"], r["variant"])].append(r)
    parts, summary = [], {}
    for model, level in sorted({k[:2] for k in groups}):
        b = base[model]["test"]
        rows = []
        for (m, lv, variant), rs in groups.items():
            if (m, lv) != (model, level):
                continue
            tests = [r["test"] for r in rs]
            mean = statistics.mean(tests)
            summary[(model, level, variant)] = mean
            rows.append((mean, [variant, f"{mean - b:+.2f} ({mean:.2f})",
                                f"{min(tests):.2f}-{max(tests):.2f}" if len(tests) > 1 else "-", len(tests),
                                f"{statistics.mean(r['flops_reduction'] for r in rs):.1f}",
                                f"{statistics.mean(r['params_reduction'] for r in rs):.1f}",
                                f"{statistics.mean(r['cr'] for r in rs):.3f}",
                                f"{statistics.mean(r['bn_val'] for r in rs):.2f}"]))
        rows.sort(key=lambda t: -t[0])
        parts.append(f"### {model}, about {level}% fewer FLOPs (base test {b:.2f}%)\n\n" + markdown_table(
            ["criterion", "test change (mean top-1) %", "range over seeds", "seeds", "FLOPs reduction %",
             "params reduction %", "cr", "val after BN re-estimation only %"], [r for _, r in rows]))
    r = next(iter(runs.values()))
    intro = (f"Every criterion prunes the same trained model with the same per-layer rule (the cumulative contribution "
             f"rate, its cr bisected by counting FLOPs until the pruned model has the target FLOPs), then gets the same "
             f"recovery: BatchNorm re-estimation on 20 batches and {r['ft_epochs']:g} epoch of fine-tuning at lr "
             f"{r['lr']:g} (cosine), with the same seeds. Torch-pruning's criteria are its own importance classes "
             "(`tp.importance.*`), scored on the same 4 calibration batches. The mean is over the seeds; "
             "the range is the lowest and highest seed.\n\n" + commands(table))
    return intro + "\n\n".join(parts), summary


def criteria_plot(summary, runs):
    models_levels = sorted({(m, lv) for m, lv, _ in summary})
    fig, axes = plt.subplots(1, len(models_levels), figsize=(6 * len(models_levels), 4.5), squeeze=False)
    for ax, (model, level) in zip(axes[0], models_levels):
        names = sorted((v for m, lv, v in summary if (m, lv) == (model, level)), key=lambda v: -summary[(model, level, v)])
        for i, v in enumerate(names):
            tests = [r["test"] for r in runs.values() if (r["model"], r["level"], r["variant"]) == (model, level, v)]
            ax.bar(i, statistics.mean(tests), color="tab:orange" if v.startswith("perm") else "tab:blue")
            ax.plot([i] * len(tests), tests, "k.", ms=4)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        lo = min(r["test"] for r in runs.values() if (r["model"], r["level"]) == (model, level))
        ax.set_ylim(lo - 2, None)
        ax.set_ylabel("test top-1 % after fine-tune")
        ax.set_title(f"{model}: about {level}% fewer FLOPs")
    fig.tight_layout()
    fig.savefig(FIGS / "criteria.png", dpi=110)
    plt.close(fig)


def seeds_cell(rs, base):
    """Change from the base over seeds: mean (and [min, max] when there are several)."""
    if not rs:
        return "-"
    changes = [r["test"] - base for r in rs]
    mean = statistics.mean(changes)
    return (f"{mean:+.2f} ({base + mean:.2f})" if len(rs) == 1
            else f"{mean:+.2f} [{min(changes):+.2f}, {max(changes):+.2f}]")


def ablation_tables(runs, base, title="## 3. The thesis's ablations"):
    if not runs:
        return f"{title}\n\nNot run yet."
    table = "ablations_recovery" if "recovery" in title else "ablations"
    model = next(iter(runs)).split("|")[0]
    b = base[model]["test"]
    get = defaultdict(list)
    for r in runs.values():
        if r["table"] == "3-3/3-4":
            get[(r.get("perm"), r.get("input"), r.get("ratio"))].append(r)
    seeds = len({r.get("seed", 0) for r in runs.values() if "test" in r})
    t33 = [[ratio] + [seeds_cell(get[(p, "data", ratio)], b) for p in ("zero", "reinit", "shuffle")]
           + [f"{get[('shuffle', 'data', ratio)][0]['flops_reduction']:.1f}" if get[("shuffle", "data", ratio)] else "-"]
           + [THESIS["3-3"][p][i] for p in ("zero", "reinit", "shuffle")] for i, ratio in enumerate(RATIOS)]
    t34 = [[ratio] + [seeds_cell(get[("shuffle", inp, ratio)], b) for inp in ("random", "data")]
           + [THESIS["3-4"][inp][i] for inp in ("random", "data")] for i, ratio in enumerate(RATIOS)]
    by_rule = defaultdict(list)
    for r in runs.values():
        if r["table"] == "4-1":
            by_rule[(r.get("matches_cr", r["value"]), r["rule"])].append(r)
    t41 = [[f"{rs[0]['rule']} {statistics.mean(r['value'] for r in rs):.3f}", seeds_cell(rs, b),
            f"{statistics.mean(r['flops_reduction'] for r in rs):.1f}",
            f"{statistics.mean(r['params_reduction'] for r in rs):.1f}", len({r.get("seed", 0) for r in rs})]
           for (_, _), rs in sorted(by_rule.items(), key=lambda kv: (-kv[0][0], kv[0][1]))]
    r = next(r for r in runs.values() if "test" in r)
    return (f"{title} ({model}, base test {b:.2f}%, {seeds} seed{'s' if seeds > 1 else ''})\n\n" + commands(table)
            + f"Each pruned model gets BatchNorm re-estimation and {r['ft_epochs']:g} epoch(s) of fine-tuning at lr "
              f"{r['lr']:g}. Cells: test change from the base, mean over seeds [min, max]."
            + (" Runs are added as they finish (a 5-epoch vgg16@0.5 run takes 10-18 minutes on this CPU and about "
               "2 on an H200 shared with nine other runs; the commands say which ran there); '-' is not run "
               "yet.\n\n" if table == "ablations_recovery" else "\n\n")
            + "### Table 3-3: permutation methods at one pruning ratio per layer\n\nThe thesis's own method: sampled "
            "permutation (one draw), conv-output measure, data input. Columns 2-4 are ours, the last three are "
            "seed 003's VGG16 (full width, base 89.08%, its own fine-tuning), quoted for reference.\n\n"
            + markdown_table(["ratio", "zero", "reinit", "shuffle", "FLOPs reduction % (shuffle)",
                              "thesis zero", "thesis reinit", "thesis shuffle"], t33)
            + "\n\n### Table 3-4: data against random images as input (shuffle)\n\n"
            + markdown_table(["ratio", "random images", "data", "thesis random", "thesis data"], t34)
            + "\n\n### Table 4-1: one global ratio against the cumulative contribution rate, at matched FLOPs\n\n"
              "Each global ratio is chosen (by counting FLOPs) to match the cr row above it; importance is convslim's "
              "default (expected shuffle, conv measure).\n\n"
            + markdown_table(["rule", "test change %", "FLOPs reduction %", "params reduction %", "seeds"], t41)
            + "\n\nThesis (VGG16, reference): "
            + "; ".join(f"{r[0]}: {r[1]}, FLOPs -{r[2]}%, params -{r[3]}%" for r in THESIS["4-1"])
            + ".\n\n![channels kept per layer](results/pruning/figure_4_4.png)")


def figure_4_4(runs):
    figs = sorted((r for r in runs.values() if r["table"] == "fig 4-4"), key=lambda r: -r["cr"])
    if not figs:
        return
    layers = sorted(figs[0]["kept"], key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])
    fig, ax = plt.subplots(figsize=(10, 4))
    for r in figs:
        ax.plot(range(len(layers)), [r["kept"][n] for n in layers], marker=".", label=f"cr {r['cr']:g}")
    ax.set_xticks(range(len(layers)), layers, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("channels kept")
    ax.set_title("Figure 4-4: channels kept per coupled group under the cumulative contribution rate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(FIGS / "figure_4_4.png", dpi=110)
    plt.close(fig)


def auto_table(runs):
    if not runs:
        return "## 4. Fully automatic pruning\n\nNot run yet."
    rows = [[r["model"], f"{r['base_test_acc']:.2f}", change(r["test_acc"], r["base_test_acc"]),
             f"{r['flops_reduction']:.1f}", f"{r['params_reduction']:.1f}", f"{r['chosen_cr']:.4f}", r["probes"],
             f"{r['probe_epochs']:g} x {r['probes']} + {r['final_epochs']:g} = {r['epochs']:g}",
             f"{r['search_seconds']:.0f} + {r['final_seconds']:.0f}", THESIS["4-2"].get(r["arch"], "not in the thesis")]
            for r in runs.values()]
    return ("## 4. Fully automatic pruning (max-acc-loss 1.0, min-interval 0.01)\n\n"
            + commands("auto") + "The budget is judged on the validation "
            "split; the change is measured on test. The thesis column (accuracy change (accuracy), FLOPs %, params %) "
            "is seed 003's table 4-2 for the same architecture at full width and its own training, for reference.\n\n"
            + markdown_table(["model", "base test %", "test change %", "FLOPs reduction %", "params reduction %",
                              "chosen cr", "probes", "epochs (probes + final)", "seconds (search + final)",
                              "thesis table 4-2"], rows))


def speed_table(runs):
    if not runs:
        return "## 5. Real speed\n\nNot run yet."
    rows = []
    for name, r in sorted(runs.items()):
        b, s = r["base_latency"], r["latency"]
        rows.append([name, f"{r['base_flops'] / r['flops']:.2f}x"]
                    + [f"{b[k]:.2f} / {s[k]:.2f} = {b[k] / s[k]:.2f}x"
                       for k in ("torch_b1_ms", "torch_b64_ms", "ort_b1_ms", "ort_b64_ms")])
    return ("## 5. Real speed on this CPU\n\n"
            + commands("speed") + "Every pruned model saved by the tables above is timed against its base in one process "
            "(each figure the median of 3 alternating rounds of 30 runs, 2 threads). Cells: base ms / pruned ms = measured speed-up.\n\n"
            + markdown_table(["pruned model", "FLOPs ratio", "PyTorch batch 1", "PyTorch batch 64",
                              "ONNX Runtime batch 1", "ONNX Runtime batch 64"], rows))


def proxy_table(runs):
    with_probe = [r for r in runs.values() if "probe_val" in r]
    if len(with_probe) < 3:
        return "## 6. The recovery proxy\n\nNot run yet."
    rows, groups = [], defaultdict(list)
    for r in with_probe:
        groups[f"{r['model']}, about {r['level']}% fewer FLOPs"].append(r)
    groups["all runs pooled"] = with_probe
    for label, rs in groups.items():
        test = [r["test"] for r in rs]
        rows.append([label, len(rs), f"{spearmanr([r['bn_val'] for r in rs], test)[0]:.3f}",
                     f"{spearmanr([r['probe_val'] for r in rs], test)[0]:.3f}",
                     f"{spearmanr([r['val'] for r in rs], test)[0]:.3f}",
                     f"{statistics.mean(r['test'] - r['probe_val'] for r in rs):+.2f}"])
    r = with_probe[0]
    return ("## 6. The recovery proxy\n\nOver the criteria runs of table 2 (different criteria at the same FLOPs: a "
            "ranking that is not given by the compression alone), Spearman rank correlation between what a search "
            "probe sees on the validation split and the test accuracy after the shared fine-tune. The probe is a "
            f"copy given BatchNorm re-estimation and {r['probe_epochs']:g} epoch of fine-tuning (the search's `recover`); "
            f"the full fine-tune is {r['ft_epochs']:g} epoch from the same start. Runs: table 2's first seed.\n\n"
            + markdown_table(["runs", "n", "BN re-estimation only", "BN + short fine-tune (probe)",
                              "val after full fine-tune", "mean test after full fine-tune - probe val"], rows)
            + "\n\nThe last column is how far the probe's reading sits below the accuracy the model reaches after "
              "its full fine-tune: the search judges probes by that reading, so a short probe makes it cautious.")


def machines_used():
    """The machines the cached runs were made on (a file's own, and the runs merge_rows.py marked)."""
    seen = set()
    for path in CACHE.glob("*.json"):
        data = json.loads(path.read_text())
        seen.add(data.get("machine", {}).get("gpu") or data.get("machine", {}).get("cpu"))
        seen |= {r["machine"].split(",")[0] for r in data.get("runs", {}).values() if isinstance(r, dict) and "machine" in r}
    return ", ".join(sorted(m for m in seen if m))


def render():
    FIGS.mkdir(parents=True, exist_ok=True)
    base, crit, abl, auto, speed = (load(t) for t in ("base", "criteria", "ablations", "auto", "speed"))
    recovery = load("criteria_recovery")
    recovery_md = criteria_table(recovery, base, "criteria_recovery")[0] if recovery else "Not run yet."
    crit_md, summary = criteria_table(crit, base)
    if summary:
        criteria_plot(summary, crit)
    figure_4_4(abl)
    abl_recovery = load("ablations_recovery")
    proxy_md = proxy_table(crit)
    md = "\n\n".join([
        "# Pruning benchmarks on CIFAR-10 (issue 4)\n\nEvery figure below comes from the cached runs in "
        "`benchmarks/results/pruning/*.json`, made by the commands given with each table, and rendered by "
        f"`{CMD} render`. Machines: {machines_used()}; CPU runs on 2 shared cores, and a command made on a "
        "GPU says so after it (`# on ...`).",
        FINDINGS.read_text().strip() if FINDINGS.exists() else "",
        (RESULTS / "bases.md").read_text().strip() if (RESULTS / "bases.md").exists() else "",
        base_tables(base),
        "## 2a. Criteria at a real recovery (issue 13)\n\nThe interim resnet20 from "
        "`../shared/bases/` (trained on an H200 by `convslim train`, 70 epochs), about 50% and 70% fewer FLOPs, 5 epochs of "
        "fine-tuning per run. Seeds are added as the runs finish (each run about 12-16 minutes on this CPU); the "
        "seeds column says how many each mean has. Every criterion has its three seeds at 50%, and the four run at 70% (the 50% level's best, both permutation estimators and L1) have theirs: the verdict is at "
        "the top of this page.\n\n" + recovery_md,
        "## 2. Criteria at matched FLOPs (short budget: how fast each criterion recovers)\n\n" + crit_md
        + "\n\n![criteria](results/pruning/criteria.png)",
        ablation_tables(abl_recovery, base, "## 3a. The thesis's ablations at a real recovery (issue 13)")
        if abl_recovery else "## 3a. The thesis's ablations at a real recovery (issue 13)\n\nNeeds a GPU: "
        "`python pruning_tables.py ablations --model ../../shared/bases/vgg16w05-cifar10-45ep.pt --seeds 0,1 "
        "--ft-epochs 5 --cache ablations_recovery` is about 200 epochs of vgg16@0.5 (several hours on this CPU, "
        "minutes on a GPU).",
        ablation_tables(abl, base), auto_table(auto), speed_table(speed), proxy_md,
        *[(RESULTS / f"{name}.md").read_text().strip() for name in ("latency_pruning", "auto_oracle")
          if (RESULTS / f"{name}.md").exists()]])
    OUT.write_text(md + "\n")
    (RESULTS / "pruning.json").write_text(json.dumps({"machine": machine(), "commit": git_commit(), "base": base,
                                                      "criteria": crit, "ablations": abl, "auto": auto,
                                                      "speed": speed}, indent=1))
    print(md)
