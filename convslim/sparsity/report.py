"""Report section for unstructured sparsity: per-layer sparsity and the prune/fine-tune schedule."""


def report_section(report, summary):
    import matplotlib.pyplot as plt

    size = summary.get("sizes", {})
    text = (f"Magnitude pruning, {summary['config']['scope']} scope, {summary['config']['steps']} step(s): "
            f"{100 * summary['sparsity']:.1f}% of conv/linear weights are zero.")
    if size:
        text += (f" Dense checkpoint {size['dense_bytes']:,} bytes, CSR file {size['csr_bytes']:,} bytes "
                 f"({size['dense_bytes'] / size['csr_bytes']:.2f}x smaller). FLOPs are unchanged on dense "
                 f"kernels: the zeros only pay off with sparse kernels or sparse storage.")
    sec = report.section("Unstructured sparsity", text)
    rows = summary["layers"]
    sec.tables.append((["weight", "elements", "zeros", "sparsity %"],
                       [[r["weight"], r["numel"], r["zeros"], f"{100 * r['sparsity']:.1f}"] for r in rows]))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].bar(range(len(rows)), [100 * r["sparsity"] for r in rows])
    axes[0].set_xticks(range(len(rows)), [r["weight"].removesuffix(".weight") for r in rows], rotation=70, fontsize=7)
    axes[0].set_ylabel("zeros %")
    steps = summary["steps"]
    if steps and "val_acc" in steps[0]:
        axes[1].plot([100 * s["sparsity"] for s in steps], [s["val_acc"] for s in steps], "o-", label="sparse")
        axes[1].axhline(summary["base_val_acc"], color="gray", ls="--", label="dense")
        axes[1].set_xlabel("sparsity % after step")
        axes[1].set_ylabel("val top-1 %")
        axes[1].legend()
    else:
        axes[1].axis("off")
    report.figure(sec, "sparsity", "Zeros per layer, and validation accuracy along the schedule")
    return sec
