"""Channel scores under every criterion, reduced to one contribution vector per coupled group.

`permutation` is the thesis's (importance.py); the baselines use torch-pruning's own importance
classes where it ships them (l1, l2, fpgm, bn-scale, taylor, lamp, random), so a comparison is
against the anchor library itself; hrank (average feature-map rank) is computed here.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp

from ..errors import ConvslimError
from ..hooks import run_with_hooks
from .importance import contributions, following_bn, permutation_importance
from .retention import group_contributions, normalised

TP_CRITERIA = {
    "l1": lambda: tp.importance.MagnitudeImportance(p=1),
    "l2": lambda: tp.importance.MagnitudeImportance(p=2),
    "fpgm": lambda: tp.importance.FPGMImportance(),
    "bn-scale": lambda: tp.importance.BNScaleImportance(),
    "taylor": lambda: tp.importance.TaylorImportance(),
    "lamp": lambda: tp.importance.LAMPImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}
CRITERIA = ("permutation", *TP_CRITERIA, "hrank")


@dataclass
class PermutationOptions:
    perm: str = "shuffle"
    estimator: str = "expected"
    samples: int = 1
    measure: str = "conv"      # conv output (thesis): bn scored worse in benchmarks/RESULTS.md, table 2
    input: str = "data"        # data | random
    seed: int = 0


def random_inputs(batches, seed=0):
    """Random images with the data's shape, normalised like the data (the thesis's weak variant);
    drawn on the CPU (the same images on every device), placed where the batches are."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(x.shape, generator=gen).to(x.device) for x in batches]


def layer_scores(model, groups, batches, graph, criterion="permutation", options=None, labels=None):
    """{layer: raw per-channel scores} for layer-wise criteria (permutation, hrank)."""
    layers = sorted({layer for g in groups for layer in g.layers})
    if criterion == "permutation":
        o = options or PermutationOptions()
        inputs = batches if o.input == "data" else random_inputs(batches, o.seed)
        if o.input not in ("data", "random"):
            raise ConvslimError(f"unknown importance input {o.input!r}; choose data or random")
        return permutation_importance(model, layers, inputs, perm=o.perm, estimator=o.estimator,
                                      samples=o.samples, measure=o.measure, graph=graph, seed=o.seed)
    if criterion == "hrank":
        return hrank_scores(model, layers, batches, graph)
    raise ConvslimError(f"{criterion} is not a layer-wise criterion")


@torch.no_grad()
def hrank_scores(model, layers, batches, graph):
    """HRank: the average rank of each channel's feature map after its BatchNorm and ReLU."""
    modules = dict(model.named_modules())
    sums = {n: None for n in layers}

    def hook(name):
        bn = following_bn(graph, modules[name])

        def record(mod, args, out):
            if out.dim() != 4:
                rank = out.detach().abs().gt(0).float().sum(0)  # linear layer: rank 1 per active unit
            else:
                fmap = F.relu(bn(out)) if bn is not None else F.relu(out)
                rank = torch.linalg.matrix_rank(fmap.float()).float().sum(0)
            sums[name] = rank if sums[name] is None else sums[name] + rank
        return record

    images = run_with_hooks(model, {n: hook(n) for n in layers}, batches)
    return {n: (s / images).cpu() for n, s in sums.items()}


def taylor_gradients(model, batches, labels):
    """Accumulate loss gradients on the calibration batches, as Taylor importance needs."""
    if labels is None:
        raise ConvslimError("the taylor criterion needs labelled calibration data")
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for x, y in zip(batches, labels):
            F.cross_entropy(model(x), y).backward()


def group_scores(model, groups, batches, graph, criterion="permutation", options=None, labels=None):
    """{group root: contributions over the group's channels (sum 1)} plus the raw layer scores."""
    if criterion not in CRITERIA:
        raise ConvslimError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion in TP_CRITERIA:
        imp = TP_CRITERIA[criterion]()
        if criterion == "taylor":
            taylor_gradients(model, batches, labels)
        torch.manual_seed(options.seed if options else 0)
        out = {}
        with torch.no_grad():
            for g in groups:
                score = imp(g.tp_group)
                out[g.root] = normalised(score.cpu()) if score is not None else torch.full((g.size,), 1.0 / g.size)
        if criterion == "taylor":
            model.zero_grad(set_to_none=True)
        return out, {}
    raw = layer_scores(model, groups, batches, graph, criterion, options, labels)
    per_layer = {name: contributions(s) for name, s in raw.items()}
    return {g.root: group_contributions(g, per_layer) for g in groups}, raw

