"""Convert any model's conv layers to compact modules (seed 003 section 2.2.5, eqs. 2-10 to 2-15):
what each conv layer would cost as a depthwise-separable or a Ghost replacement, and the converted
model itself, trained by distillation from the original. (The compact networks of the zoo are
convslim.models.compact.)

    rows = compare_layers(model)                                  # params / FLOPs per conv layer
    student, rows = convert(model, "separable")                   # copy, replaced layers fresh
    log = distill_fit(student, model, splits, TrainConfig(epochs=10))

Separable: depthwise kxk (C_in k^2) + pointwise 1x1 (C_in C_out) against C_in C_out k^2, a ratio
of 1/C_out + 1/k^2. Ghost (ratio s): a primary conv to C_out/s maps plus a cheap d x d depthwise
for the rest, about 1/s. The first conv (the stem, which sees the raw image) is kept unless asked.
"""
import copy
import math

import torch
from torch import nn

from .checkpoint import EDIT_REPLAYERS, record_of
from .device import device_of
from .errors import ConvslimError
from .layers import get_module, input_shapes, replace_module
from .metrics import count
from .models import init_weights
from .models.compact import GhostModule, SeparableConv

KINDS = ("separable", "ghost")


def separable_ratio(cout, kernel_area):
    """The seeds' cost ratio of a depthwise-separable conv to a standard one: 1/C_out + 1/k^2."""
    return 1 / cout + 1 / kernel_area


def replacement(layer, to, *, ratio=2, dw=3):
    """A fresh module that can stand where the conv `layer` stands (same in/out shape)."""
    if to == "separable":
        return SeparableConv(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                             layer.dilation, bias=layer.bias is not None)
    if to == "ghost":
        return GhostModule(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, ratio=ratio, dw=dw,
                           relu=False, padding=layer.padding, dilation=layer.dilation)
    raise ConvslimError(f"unknown conversion {to!r}; choose one of {', '.join(KINDS)}")


def _convertible(layer):
    return (isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str))


def compare_layers(model, *, ratio=2, dw=3):
    """Per plain conv layer: params and FLOPs as it is, as separable and as Ghost, measured by
    counting the replacement modules, with the seed's separable formula beside them."""
    names = [n for n, m in model.named_modules() if _convertible(m)]
    shapes = input_shapes(model, names)
    rows = []
    for i, name in enumerate(shapes):
        layer = get_module(model, name)
        x = torch.zeros(1, *shapes[name])   # count() runs it where each module is
        now = count(layer, x)
        sep = count(replacement(layer, "separable"), x)
        gho = count(replacement(layer, "ghost", ratio=ratio, dw=dw), x)
        area = layer.kernel_size[0] * layer.kernel_size[1]
        rows.append({"layer": name, "stem": i == 0, "in": layer.in_channels, "out": layer.out_channels,
                     "kernel": list(layer.kernel_size), "params": now["params"], "flops": now["flops"],
                     "separable_params": sep["params"], "separable_flops": sep["flops"],
                     "ghost_params": gho["params"], "ghost_flops": gho["flops"],
                     "separable_formula": separable_ratio(layer.out_channels, area),
                     "separable_ratio": sep["flops"] / now["flops"], "ghost_ratio": gho["flops"] / now["flops"]})
    return rows


def convert(model, to="separable", *, ratio=2, dw=3, include_stem=False, layers=None):
    """A copy of `model` whose plain conv layers are replaced (where that cuts FLOPs); replaced
    layers start from fresh weights, the rest keep theirs. Returns (model, compare rows)."""
    if to not in KINDS:
        raise ConvslimError(f"unknown conversion {to!r}; choose one of {', '.join(KINDS)}")
    if ratio < 2 or dw < 1 or dw % 2 == 0:
        raise ConvslimError(f"ghost ratio must be >= 2 and the cheap kernel odd, got ratio {ratio}, dw {dw}")
    rows = compare_layers(model, ratio=ratio, dw=dw)
    if layers:
        unknown = [n for n in layers if n not in {r["layer"] for r in rows}]
        if unknown:
            raise ConvslimError(f"no plain conv layer named {unknown[0]!r} in the model")
    out = copy.deepcopy(model)
    rec = record_of(out)
    for row in rows:
        wanted = (row["layer"] in layers) if layers else (include_stem or not row["stem"])
        row["apply"] = bool(wanted and row[f"{to}_flops"] < row["flops"])
        if row["apply"]:
            layer = get_module(out, row["layer"])
            new = init_weights(replacement(layer, to, ratio=ratio, dw=dw))   # drawn on the CPU: same on every device
            replace_module(out, row["layer"], new.to(device_of(layer)))
            rec.add_edit("convert", layer=row["layer"], to=to, ratio=ratio, dw=dw)
    if not any(r["apply"] for r in rows):
        raise ConvslimError(f"no conv layer of this model gets cheaper as {to}; nothing to convert")
    return out.eval(), rows


def _replay(model, edit):
    layer = get_module(model, edit["layer"])
    new = replacement(layer, edit["to"], ratio=int(edit.get("ratio", 2)), dw=int(edit.get("dw", 3)))
    replace_module(model, edit["layer"], new.to(device_of(layer)))


EDIT_REPLAYERS["convert"] = _replay


def totals(rows, to=None):
    """Summed params and FLOPs of the compared layers: as they are, or as converted (`to`)."""
    key = "" if to is None else f"{to}_"
    pick = (lambda r: r.get("apply", True)) if to else (lambda r: True)
    return {"params": sum(r[f"{key}params"] if pick(r) else r["params"] for r in rows),
            "flops": sum(r[f"{key}flops"] if pick(r) else r["flops"] for r in rows)}


def format_table(rows):
    """Plain-text table for the terminal."""
    width = max([len(r["layer"]) for r in rows] + [5])
    lines = [f"{'layer':<{width}}  {'in':>5} {'out':>5} {'k':>3} {'params':>10} {'sep params':>10} "
             f"{'ghost par.':>10} {'FLOPs':>12} {'sep FLOPs':>12} {'ghost FLOPs':>12} {'sep/orig':>8} "
             f"{'1/Co+1/k2':>9} {'ghost/orig':>10}"]
    for r in rows:
        lines.append(f"{r['layer']:<{width}}  {r['in']:>5} {r['out']:>5} {r['kernel'][0]:>3} {r['params']:>10,} "
                     f"{r['separable_params']:>10,} {r['ghost_params']:>10,} {r['flops']:>12,} "
                     f"{r['separable_flops']:>12,} {r['ghost_flops']:>12,} {r['separable_ratio']:>8.3f} "
                     f"{r['separable_formula']:>9.3f} {r['ghost_ratio']:>10.3f}")
    return "\n".join(lines)


def report_section(report, rows, summary=None):
    """Report section: per-layer params as is, separable and Ghost (and the trained conversion)."""
    import matplotlib.pyplot as plt

    text = ("Per conv layer: parameters and FLOPs as the layer is, as a depthwise-separable replacement "
            "and as a Ghost module; sep/orig against the seed's 1/C_out + 1/k^2.")
    if summary:
        text += (f"\n\nConverted to {summary['to']}: test top-1 {summary['base_test']:.2f}% -> {summary['test']:.2f}% "
                 f"(trained {summary['epochs']} epochs by distillation from the original), params "
                 f"{summary['base_params']:,} -> {summary['params']:,}, FLOPs {summary['base_flops']:,} -> "
                 f"{summary['flops']:,}.")
    sec = report.section("Compact modules: separable and Ghost replacements", text)
    sec.tables.append((["layer", "in", "out", "k", "params", "separable", "ghost", "FLOPs", "sep FLOPs",
                        "ghost FLOPs", "sep/orig", "1/Co+1/k^2"],
                       [[r["layer"], r["in"], r["out"], r["kernel"][0], r["params"], r["separable_params"],
                         r["ghost_params"], r["flops"], r["separable_flops"], r["ghost_flops"],
                         f"{r['separable_ratio']:.3f}", f"{r['separable_formula']:.3f}"] for r in rows]))
    plt.figure(figsize=(max(5, 0.45 * len(rows)), 3.4))
    xs = range(len(rows))
    for off, key, label in ((-0.27, "params", "as is"), (0, "separable_params", "separable"),
                            (0.27, "ghost_params", "ghost")):
        plt.bar([x + off for x in xs], [r[key] for r in rows], 0.27, label=label)
    plt.yscale("log")
    plt.xticks(list(xs), [r["layer"] for r in rows], rotation=70, fontsize=7)
    plt.ylabel("parameters")
    plt.legend()
    report.figure(sec, "compact_layers", "Parameters per conv layer: as is, separable, Ghost")
    return sec


def ghost_params(cin, cout, kernel_area, ratio=2, dw=3):
    """Predicted parameters of a Ghost replacement (conv, BN, cheap depthwise, BN)."""
    m = math.ceil(cout / ratio)
    cheap = m * (ratio - 1)
    return cin * kernel_area * m + 2 * m + cheap * dw * dw + 2 * cheap


def separable_params(cin, cout, kernel_area, bias=False):
    """Predicted parameters of a separable replacement (depthwise, BN, pointwise)."""
    return cin * kernel_area + 2 * cin + cin * cout + (cout if bias else 0)
