"""The pruning report: channels kept per layer for several cr (thesis figure 4-4), per-channel
importance of one layer under each permutation and input (figures 3-6, 3-7), the search
trajectory, and the thesis-style result table."""
import matplotlib.pyplot as plt
import numpy as np

from ..report import Report
from .criteria import PermutationOptions
from .prune import apply_rule, channel_importance, kept_per_layer

CR_LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95)


def channels_section(report, model, importance, crs=CR_LEVELS):
    base = kept_per_layer(model)
    names = list(base)
    plt.figure(figsize=(max(6, 0.25 * len(names)), 4))
    x = np.arange(len(names))
    plt.bar(x, [base[n] for n in names], color="#ddd", label="original")
    rows = []
    for cr in crs:
        slim, _ = apply_rule(model, importance, "cr", cr)
        kept = kept_per_layer(slim)
        plt.plot(x, [kept[n] for n in names], marker=".", label=f"cr={cr}")
        rows.append([cr, sum(kept.values()), sum(base.values())])
    plt.xticks(x, names, rotation=90, fontsize=6)
    plt.ylabel("output channels")
    plt.legend(fontsize=7)
    s = report.section("Channels kept per layer",
                       "One cumulative contribution rate gives every layer its own channel count.")
    s.tables.append((["cr", "channels kept", "channels in base"], rows))
    report.figure(s, "channels_kept", "Channels kept per layer against the original, for several cr")
    report.data["channels_kept"] = {"base": base}


def importance_section(report, model, splits, layer=None, calib_batches=2):
    """One layer's per-channel contributions under zero / reinit / shuffle and data / random input."""
    curves = {}
    for source in ("data", "random"):
        for perm in ("zero", "reinit", "shuffle"):
            opts = PermutationOptions(perm=perm, estimator="expected" if perm == "shuffle" else "sample",
                                      measure="conv", input=source)
            imp = channel_importance(model, splits, calib_batches=calib_batches, options=opts)
            layer = layer or max(imp.layer_scores, key=lambda n: len(imp.layer_scores[n]))
            d = imp.layer_scores[layer]
            curves[(source, perm)] = (d / d.sum()).tolist()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    for ax, source in zip(axes, ("data", "random")):
        for perm in ("zero", "reinit", "shuffle"):
            ax.plot(curves[(source, perm)], marker=".", label=perm)
        ax.set_title(f"{layer}: {source} input")
        ax.set_xlabel("channel")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("contribution P_i")
    s = report.section("Per-channel importance", f"Layer {layer}, measured on the conv output (the thesis's "
                       "setting); shuffle uses the closed-form expectation.")
    report.figure(s, "importance", f"Per-channel contribution of {layer} by permutation method and input")
    report.data["importance"] = {"layer": layer, **{f"{a}/{b}": v for (a, b), v in curves.items()}}


def search_section(report, probes, base_val, base_flops, max_acc_loss=None):
    if not probes:
        return
    s = report.section("Search trajectory", "Each probe or step: prune at cr (of the model it starts from), "
                       "recover, judge on the validation split; a verification fine-tunes a kept model further.")
    s.tables.append((["probe", "kind", "cr", "val acc %", "FLOPs reduction %", "decision", "seconds"],
                     [[p["probe"], p.get("kind", "probe"), f"{p['cr']:.4f}" if "cr" in p else "-", f"{p['val_acc']:.2f}",
                       f"{100 * (1 - p['flops'] / base_flops):.1f}", p.get("decision", "-"), f"{p['seconds']:.1f}"]
                      for p in probes]))
    probes = [p for p in probes if "cr" in p]            # the plot: records made at a cr
    if not probes:
        return
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    crs = [p["cr"] for p in probes]
    ax1.scatter(crs, [p["val_acc"] for p in probes], c=["g" if p["decision"] == "keep" else "r" for p in probes])
    for p in probes:
        ax1.annotate(str(p["probe"]), (p["cr"], p["val_acc"]), fontsize=7)
    ax1.axhline(base_val, color="k", lw=0.8, ls="--", label="base")
    if max_acc_loss is not None:
        ax1.axhline(base_val - max_acc_loss, color="g", lw=0.8, ls=":", label="accept above")
    ax1.legend(fontsize=7, loc="lower right")
    ax1.set_xlabel("cumulative contribution rate cr")
    ax1.set_ylabel("validation accuracy % (green keep, red reject)")
    ax2 = ax1.twinx()
    ax2.plot(sorted(crs), [100 * q / base_flops for q in (p["flops"] for p in sorted(probes, key=lambda p: p["cr"]))],
             color="tab:blue", alpha=0.6)
    ax2.set_ylabel("FLOPs % of base", color="tab:blue")
    report.figure(s, "search", "Search trajectory: cr against validation accuracy and FLOPs")


def result_section(report, summary):
    s = report.section("Result", "Accuracy change on the test split; reductions against the base model. A search "
                       "judges candidates before the final fine-tune; the budget column says where it ended.")
    budget = "within_budget" in summary
    s.tables.append((["base test acc %", "pruned test acc %", "change", "FLOPs reduction %", "params reduction %",
                      "probes", "epochs", "search s"] + (["validation change against the budget"] if budget else []),
                     [[f"{summary['base_test_acc']:.2f}", f"{summary['test_acc']:.2f}",
                       f"{summary['test_acc'] - summary['base_test_acc']:+.2f}", f"{summary['flops_reduction']:.1f}",
                       f"{summary['params_reduction']:.1f}", summary.get("probes", "-"), summary.get("epochs", "-"),
                       f"{summary.get('search_seconds', 0):.0f}"]
                      + ([f"{summary['final_val_acc'] - summary['base_val_acc']:+.2f} of -{summary['max_acc_loss']:g}: "
                          f"{'within' if summary['within_budget'] else 'OVER'}"] if budget else [])]))


def write_pruning_report(folder, model, splits, importance, *, summary=None, title="convslim pruning report"):
    report = Report(folder, title)
    if summary:
        result_section(report, summary)
        search_section(report, summary.get("log", []), summary["base_val_acc"], summary["base_flops"],
                       summary.get("max_acc_loss"))
    channels_section(report, model, importance)
    importance_section(report, model, splits)
    if summary:
        report.data["summary"] = {k: v for k, v in summary.items() if k != "log"}
    return report.write()
