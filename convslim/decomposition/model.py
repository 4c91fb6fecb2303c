"""Decompose a whole model: plan ranks per layer, keep only replacements that cut FLOPs, swap
the layers in, and record each swap so `convslim.load` can rebuild the structure.

    slim, rows = decompose(model, "tucker", energy=0.9)
"""
import copy

import torch
from torch import nn

from ..checkpoint import EDIT_REPLAYERS, record_of
from ..device import device_of
from ..errors import ConvslimError
from ..layers import get_module, input_shapes, replace_module
from ..metrics import count
from . import cp, svd, tucker
from .rank import check_energy

FACTORS = {"svd": svd, "tucker": tucker, "cp": cp}
METHODS = tuple(FACTORS)


class LowRank(nn.Sequential):
    """A layer replaced by its factors, in order; `method` and `ranks` say how."""

    def __init__(self, layers, method, ranks):
        super().__init__(*layers)
        self.method = method
        self.ranks = [int(r) for r in ranks]


def layer_method(layer, method):
    """What a layer can become: linear and 1x1 layers SVD, kxk convs the chosen method; grouped
    convs, string or non-zero padding modes are left alone (None)."""
    if isinstance(layer, nn.Linear):
        return "svd"
    if not isinstance(layer, nn.Conv2d) or layer.groups != 1 or layer.padding_mode != "zeros" \
            or isinstance(layer.padding, str):
        return None
    return "svd" if layer.kernel_size == (1, 1) else method


def candidates(model, layers=None):
    """Conv and linear layers not already inside a decomposition, optionally only `layers`."""
    inside = [n + "." for n, m in model.named_modules() if isinstance(m, LowRank)]
    found = [n for n, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear)) and not any(n.startswith(p) for p in inside)]
    if layers:
        unknown = [n for n in layers if n not in found]
        if unknown:
            raise ConvslimError(f"no decomposable layer named {unknown[0]!r} in the model")
        found = [n for n in found if n in layers]
    return found


def plan(model, method="tucker", energy=0.9, *, ranks=None, layers=None):
    """One row per candidate layer: method, ranks, params and FLOPs as is and decomposed, and
    whether to apply it (only when FLOPs drop)."""
    if method not in FACTORS:
        raise ConvslimError(f"unknown decomposition method {method!r}; choose one of {', '.join(METHODS)}")
    if ranks is None:
        check_energy(energy)
    names = candidates(model, layers)
    shapes = input_shapes(model, names)
    rows = []
    for name in names:
        layer = get_module(model, name)
        m = layer_method(layer, method)
        if m is None or name not in shapes:
            continue
        r = [int(v) for v in (ranks[name] if ranks and name in ranks else FACTORS[m].ranks_for(layer, energy))]
        x = torch.zeros(1, *shapes[name])   # count() runs it where each module is
        before, after = count(layer, x), count(LowRank(FACTORS[m].structure(layer, r), m, r), x)
        rows.append({"layer": name, "method": m, "ranks": r, "full_ranks": _full(layer, m),
                     "params": before["params"], "flops": before["flops"],
                     "new_params": after["params"], "new_flops": after["flops"],
                     "apply": after["flops"] < before["flops"]})
    return rows


def _full(layer, method):
    o, i = layer.weight.shape[:2]
    rest = layer.weight[0, 0].numel()
    return {"svd": [min(o, i * rest)], "tucker": [o, i], "cp": [max(o, i)]}[method]


def decompose(model, method="tucker", energy=0.9, *, ranks=None, layers=None):
    """A decomposed copy of `model` on the model's device (the original is untouched) and the
    per-layer plan rows."""
    rows = plan(model, method, energy, ranks=ranks, layers=layers)
    out = copy.deepcopy(model)
    rec = record_of(out)
    for row in rows:
        if row["apply"]:
            layer = get_module(out, row["layer"])
            new = LowRank(FACTORS[row["method"]].factorize(layer, row["ranks"]), row["method"], row["ranks"])
            replace_module(out, row["layer"], new.to(device_of(layer)))
            rec.add_edit("decompose", layer=row["layer"], method=row["method"], ranks=row["ranks"])
    return out.eval(), rows


def _replay(model, edit):
    layer = get_module(model, edit["layer"])
    ranks = [int(r) for r in edit["ranks"]]
    new = LowRank(FACTORS[edit["method"]].structure(layer, ranks), edit["method"], ranks)
    replace_module(model, edit["layer"], new.to(device_of(layer)))


EDIT_REPLAYERS["decompose"] = _replay
