"""Report section for a decomposition: per-layer FLOPs before/after, and the search probes."""


def report_section(report, summary):
    import matplotlib.pyplot as plt

    rows = summary["layers"]
    done = [r for r in rows if r["apply"]]
    sec = report.section(
        f"Low-rank decomposition ({summary['method']})",
        f"{len(done)} of {len(rows)} candidate layers decomposed (the others would not have cut FLOPs). "
        f"FLOPs {summary['base_flops']:,} -> {summary['flops']:,} (-{summary['flops_reduction']:.1f}%), "
        f"params {summary['base_params']:,} -> {summary['params']:,} (-{summary['params_reduction']:.1f}%).")
    sec.tables.append((["layer", "method", "ranks (of full)", "params", "new params", "FLOPs", "new FLOPs", "applied"],
                       [[r["layer"], r["method"], f"{r['ranks']} of {r['full_ranks']}", r["params"], r["new_params"],
                         r["flops"], r["new_flops"], "yes" if r["apply"] else "no"] for r in rows]))
    if rows:
        plt.figure(figsize=(max(5, 0.45 * len(rows)), 3.4))
        xs = range(len(rows))
        plt.bar([x - 0.2 for x in xs], [r["flops"] for r in rows], 0.4, label="original")
        plt.bar([x + 0.2 for x in xs], [r["new_flops"] if r["apply"] else r["flops"] for r in rows], 0.4,
                label="decomposed")
        plt.xticks(list(xs), [r["layer"] for r in rows], rotation=70, fontsize=7)
        plt.ylabel("FLOPs")
        plt.legend()
        report.figure(sec, f"decompose_{summary['method']}_layers", "FLOPs per layer, original and decomposed")
    probes = summary.get("log") or []
    if probes:
        plt.figure(figsize=(5, 3.2))
        for decision, mark in (("keep", "go"), ("reject", "rx")):
            ps = [p for p in probes if p["decision"] == decision]
            plt.plot([p["energy"] for p in ps], [p["val_acc"] for p in ps], mark, label=decision)
        plt.axhline(summary["base_val_acc"], color="gray", ls="--", label="original")
        plt.xlabel("energy kept")
        plt.ylabel("val top-1 % after probe fine-tune")
        plt.legend()
        report.figure(sec, f"decompose_{summary['method']}_search", "Binary search over the energy threshold")
    return sec
