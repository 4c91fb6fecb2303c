"""Score once, then prune a copy under a fixed rule: the building block of the search.

    imp = channel_importance(model, data)                # every coupled group scored once
    slim, kept = apply_rule(model, imp, "cr", 0.8)       # a genuinely smaller copy
"""
import copy
from dataclasses import asdict, dataclass, field

import torch

from ..batches import take_batches
from ..checkpoint import ensure_record, example_input as example, record_of
from ..device import device_of
from ..errors import ConvslimError
from ..graph import build_graph
from .criteria import CRITERIA, PermutationOptions, group_scores
from .retention import coupled_groups, plan_removals
from .surgery import remove_channels


@dataclass
class Importance:
    """Scores of one model: its coupled groups and each group's channel contributions."""
    criterion: str
    groups: list
    contributions: dict                    # group root -> tensor summing to 1
    layer_scores: dict = field(default_factory=dict)   # layer -> raw D_i (layer-wise criteria)
    options: dict = field(default_factory=dict)

    def channels(self):
        return {g.root: g.size for g in self.groups}


def calibration_batches(data, batches, batch_size, seed=0, device="cpu"):
    """(inputs, targets) for scoring: from convslim Splits, labelled un-augmented training batches
    (never validation or test); from any other iterable, its first `batches` batches."""
    from ..data import Splits

    if batches < 1:
        raise ConvslimError(f"calibration needs at least one batch, got {batches}")
    if not isinstance(data, Splits):
        xs, ys = take_batches(getattr(data, "batches", data), batches, device)
        return xs, (ys if all(y is not None for y in ys) else None)
    loader = data.loader("train", batch_size, shuffle=True, augment=False, seed=seed,
                         limit=batches * batch_size, device=device)
    xs, ys = zip(*loader)
    return list(xs), list(ys)


def channel_importance(model, data, *, criterion="permutation", calib_batches=4, batch_size=64,
                       options=None, seed=0, example_input=None, ignored_layers=()):
    """Score every prunable channel of `model` (unchanged, where it is) on a few batches of `data`:
    convslim Splits, a Task, or any iterable of inputs or (input, target) pairs (a DataLoader).

    `example_input` (a tensor or a shape) tells convslim the input of a plain nn.Module (default: the
    first batch); `ignored_layers` (names or fnmatch patterns) are never pruned, nor are the layers
    whose outputs are the model's outputs. Scoring runs on the model's device; the scores (small
    per-channel vectors) come back on the CPU."""
    if criterion not in CRITERIA:
        raise ConvslimError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    ensure_record(model, example_input, getattr(data, "batches", data) if example_input is None else None)
    options = options or PermutationOptions(seed=seed)
    graph = build_graph(model, example(model))
    groups = coupled_groups(model, graph, ignored_layers)
    xs, ys = calibration_batches(data, calib_batches, batch_size, seed, device=device_of(model))
    contrib, raw = group_scores(model, groups, xs, graph, criterion, options, ys)
    return Importance(criterion, groups, contrib, raw, asdict(options) if criterion == "permutation" else {})


def apply_rule(model, importance, rule, value, *, multiple=1, latency=None):
    """A pruned copy of `model` (on the model's device) plus the channels kept per group; the
    original is untouched. `latency` (a LatencyTable, several, a LatencySnap built once for many
    calls, or your own `snap(group, k) -> count >= k`) moves each group's count up to one the
    deployment engine runs fast."""
    snap = None
    if latency is not None:
        from .latency_aware import LatencySnap
        snap = latency if callable(latency) else LatencySnap(model, importance.groups, latency)
    removals, kept = plan_removals(importance.groups, importance.contributions, rule, value, multiple=multiple,
                                   snap=snap)
    slim = copy.deepcopy(model)
    if removals:
        history = remove_channels(slim, removals, example(slim))
        record_of(slim).history += history
    return slim.eval(), {root: len(k) for root, k in kept.items()}


def cr_for_target(size, goal, *, what="flops", steps=16):
    """The largest cr (the least pruning) whose model's `size(cr)` is at most `goal`: counted or
    predicted, nothing trained. Size grows with cr, so a bisection finds it."""
    if size(1.0) <= goal:
        return 1.0
    smallest = size(0.0)
    if smallest > goal:
        raise ConvslimError(f"no pruned model has {goal:,.4g} {what} or less: the smallest convslim can make "
                            f"keeps one channel per group and has {smallest:,.4g}")
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if size(mid) <= goal else (lo, mid)
    return lo


def prune(model, data, *, cr=None, ratio=None, ratios=None, criterion="permutation", calib_batches=4,
          batch_size=64, options=None, multiple=1, seed=0, example_input=None, ignored_layers=(), latency=None):
    """Prune once with one fixed rule (no search); returns the smaller model and kept counts.
    `data` and the keywords are those of `channel_importance`; `latency` that of `apply_rule`."""
    chosen = [(k, v) for k, v in (("cr", cr), ("ratio", ratio), ("ratios", ratios)) if v is not None]
    if len(chosen) != 1:
        raise ConvslimError("give exactly one rule: cr, ratio or ratios")
    imp = channel_importance(model, data, criterion=criterion, calib_batches=calib_batches,
                             batch_size=batch_size, options=options, seed=seed, example_input=example_input,
                             ignored_layers=ignored_layers)
    rule, value = chosen[0]
    return apply_rule(model, imp, rule, value, multiple=multiple, latency=latency)


def kept_per_layer(model):
    """Output channels of every conv / linear layer, for tables and plots."""
    return {n: (m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
