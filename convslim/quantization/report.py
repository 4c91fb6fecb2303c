"""The quantization section of a convslim report: accuracy and size per bit width, one plot."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HEADERS = ["method", "W bits", "A bits", "top-1 %", "change (points)", "size (KiB)", "smaller by",
           "ORT latency b1 (ms)"]


def summary(res):
    """One comparable row from a `methods` result (or an fp32 row with method 'fp32')."""
    method = res["method"]
    label = {"ptq": f"int8 PTQ ({res.get('calibration', '')})", "qat": "int8 QAT",
             "lowbit": f"W{res.get('wbits')}A{res.get('abits') or 32} simulation",
             "cluster": f"k-means {res.get('clusters')}"}.get(method, method)
    if method == "binary" and res.get("xnor"):
        label = "binary (XNOR)"
    size = res.get("int8_onnx_bytes") or res.get("huffman_bytes") or res.get("bytes") or res.get("fp32_bytes")
    latency = (res.get("int8_latency_ms") or res.get("latency_ms") or {}).get("b1_ms")
    return {"label": res.get("label", label), "wbits": res.get("wbits", 32), "abits": res.get("abits") or 32,
            "top1": res["top1"], "float_top1": res.get("float_top1", res["top1"]), "bytes": size,
            "ratio": res.get("size_ratio", 1.0), "latency_ms": latency}


def _row(s):
    lat = f"{s['latency_ms']:.3f}" if s["latency_ms"] is not None else "simulated"
    return [s["label"], s["wbits"], s["abits"], f"{s['top1']:.2f}", f"{s['top1'] - s['float_top1']:+.2f}",
            f"{s['bytes'] / 1024:.1f}", f"{s['ratio']:.2f}x", lat]


def plot(rows, path):
    """Two bar panels sharing the method axis: top-1 and size on disk, bars coloured by weight bits."""
    rows = sorted(rows, key=lambda s: -s["wbits"])
    labels = [f"{s['label']}  (W{s['wbits']}/A{s['abits']})" for s in rows]
    cmap = plt.get_cmap("viridis")
    bits = sorted({s["wbits"] for s in rows})
    colors = [cmap(bits.index(s["wbits"]) / max(len(bits) - 1, 1)) for s in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, sharey=True, figsize=(10, 0.35 * len(rows) + 1.5))
    y = range(len(rows))
    ax1.barh(y, [s["top1"] for s in rows], color=colors)
    lo = min(s["top1"] for s in rows)
    ax1.set_xlim(max(0.0, lo - 5), 100)
    ax1.axvline(rows[0]["float_top1"], color="grey", linestyle="--", linewidth=1)
    ax1.set_yticks(list(y), labels, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("top-1 % (dashed: float)")
    ax2.barh(y, [s["bytes"] / 1024 for s in rows], color=colors)
    ax2.set_xscale("log")
    ax2.set_xlabel("size on disk, KiB (log scale)")
    for i, s in enumerate(rows):
        ax2.annotate(f"{s['ratio']:.1f}x", (s["bytes"] / 1024, i), fontsize=7, xytext=(3, -3),
                     textcoords="offset points")
    fig.suptitle("Accuracy and size per bit width (bar colour: weight bits)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_section(report, results, *, title="Quantization", name="quantization", text=""):
    """Add a table and a plot of `results` (dicts from convslim.quantization.methods) to a Report."""
    rows = [summary(r) for r in results]
    section = report.section(title, text or (
        "Accuracy on the test split and size on disk per method. int8 rows run on ONNX Runtime's "
        "int8 kernels (size of the QDQ ONNX file); simulated rows give the size of the coded file "
        "(codebook + Huffman-coded indices)."))
    section.tables.append((HEADERS, [_row(s) for s in rows]))
    plot(rows, report.folder / f"{name}.png")
    section.figures.append((f"{name}.png", "Top-1 accuracy and size on disk per method, coloured by weight bits"))
    report.data[name] = results
    return section
