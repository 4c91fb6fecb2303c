"""Which channels stay: coupled groups, their contributions, and the rules that pick survivors.

A coupled group (DESIGN.md 1.2) is the set of layers whose channels must go together: a residual
sum, a depthwise conv and its producer, a concatenation's consumers. torch-pruning's
DependencyGraph finds them. Each group has a root layer (the name used to remove its channels)
and member layers whose output channels it owns; a group channel's contribution is the mean of
the members' per-layer contributions P, renormalised to sum to 1 over the group.
"""
import fnmatch
import math
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConvslimError


@dataclass
class ChannelGroup:
    root: str                       # layer whose output channels index the group
    size: int                       # channels in the group
    members: list = field(default_factory=list)  # (layer name, layer idxs, root idxs), Conv2d/Linear outputs
    tp_group: object = None         # torch-pruning's Group, for its importance classes
    consumers: list = field(default_factory=list)  # (layer name, layer idxs, root idxs), Conv2d inputs

    @property
    def layers(self):
        return [m[0] for m in self.members]


def output_layers(graph):
    """The conv and linear layers whose output channels are the model's outputs, whatever their
    type (a linear classifier, a 1x1 conv head, a segmentation head): found by walking back from
    the graph's outputs through channel-preserving operations until a conv or linear is met."""
    nodes = list(graph.module2node.values())
    stack = [n for n in nodes if not n.outputs]
    found, seen = [], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, (nn.Conv2d, nn.Linear)) and not _is_depthwise(node.module):
            found.append(node.module)
        else:
            stack.extend(node.inputs)
    return found


def _is_depthwise(module):
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def matching_layers(model, patterns):
    """Modules named by `patterns` (exact names or fnmatch patterns such as 'head.*'); a pattern
    that names nothing is an error, so a typo never silently prunes what was meant to be kept."""
    named = dict(model.named_modules())
    chosen = []
    for pattern in patterns:
        hits = [m for n, m in named.items() if n and (n == pattern or fnmatch.fnmatchcase(n, pattern))]
        if not hits:
            raise ConvslimError(f"ignored layer {pattern!r} matches no layer of the model")
        chosen += hits
    return chosen


def _uneven_grouped_conv(module):
    """A grouped conv that is not depthwise: removing arbitrary channels would break its groups."""
    return isinstance(module, nn.Conv2d) and 1 < module.groups and not (
        module.groups == module.in_channels == module.out_channels)


def coupled_groups(model, graph, ignored_layers=()):
    """Every prunable group of output channels, except the model's output layers, the layers the
    user ignores (names or patterns) and channels bound to grouped convs."""
    names = {m: n for n, m in model.named_modules()}
    ignored = output_layers(graph) + matching_layers(model, ignored_layers)
    groups, grouped = [], set()
    for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
        bound = [names[item.dep.target.module] for item in tp_group if _uneven_grouped_conv(item.dep.target.module)]
        if bound:
            grouped.update(bound)
            continue
        root_module = tp_group[0].dep.target.module
        members, consumers = [], []
        for item in tp_group:
            module = item.dep.target.module
            entry = (names.get(module), [int(i) for i in item.idxs], [int(i) for i in item.root_idxs])
            if isinstance(module, (nn.Conv2d, nn.Linear)) and graph.is_out_channel_pruning_fn(item.dep.handler):
                members.append(entry)
            elif isinstance(module, nn.Conv2d) and graph.is_in_channel_pruning_fn(item.dep.handler):
                consumers.append(entry)
        if members:
            groups.append(ChannelGroup(root=names[root_module], size=len(tp_group[0].idxs),
                                       members=members, tp_group=tp_group, consumers=consumers))
    if not groups:
        raise ConvslimError("the model has no prunable conv or linear channels")
    if grouped:
        print(f"convslim: note: channels bound to grouped convs ({', '.join(sorted(grouped))}) are not pruned: "
              f"removing them would break the conv groups", file=sys.stderr)
    return groups


def group_contributions(group, layer_contributions):
    """Mean of member contributions per group channel, renormalised to sum to 1."""
    total = torch.zeros(group.size, dtype=torch.float64)
    count = torch.zeros(group.size, dtype=torch.float64)
    for layer, idxs, root_idxs in group.members:
        if layer in layer_contributions:
            p = layer_contributions[layer].double()
            total.index_add_(0, torch.tensor(root_idxs), p[idxs])
            count.index_add_(0, torch.tensor(root_idxs), torch.ones(len(idxs), dtype=torch.float64))
    mean = total / count.clamp(min=1)
    s = mean.sum()
    return (mean / s if s > 0 else mean).float()


def normalised(scores):
    """Non-negative scores turned into contributions that sum to 1."""
    scores = scores.detach().float().clamp(min=0)
    s = scores.sum()
    return scores / s if s > 0 else torch.full_like(scores, 1.0 / len(scores))


def _round_up(k, n, multiple):
    return min(n, max(1, math.ceil(k / multiple) * multiple)) if multiple > 1 else max(1, k)


def keep_cumulative(p, cr, multiple=1):
    """The smallest set of largest contributions whose sum reaches cr (at least one channel).

    cr=1 keeps every channel with non-zero contribution; cr=0 keeps one.
    """
    if not 0 <= cr <= 1:
        raise ConvslimError(f"cumulative contribution rate must be in [0, 1], got {cr}")
    p = p.double()
    order = torch.argsort(p, descending=True, stable=True)
    csum = torch.cumsum(p[order], 0)
    total = csum[-1].item() if len(csum) else 0.0
    if cr >= 1:
        k = int((p > 0).sum())
    else:
        # first index where the running sum reaches cr of the total; contributions are float32,
        # so a sum that equals cr up to float32 rounding counts as reaching it
        target = torch.tensor(cr * total - 1e-6 * total, dtype=csum.dtype)
        k = int(torch.searchsorted(csum, target).item()) + 1
    k = _round_up(min(k, len(p)), len(p), multiple)
    return sorted(order[:k].tolist())


def keep_ratio(p, ratio, multiple=1):
    """Remove the lowest-contribution share `ratio` of channels (the thesis's global shared rule)."""
    if not 0 <= ratio < 1:
        raise ConvslimError(f"pruning ratio must be in [0, 1), got {ratio}")
    n = len(p)
    k = _round_up(n - int(math.floor(ratio * n)), n, multiple)
    order = torch.argsort(p.double(), descending=True, stable=True)
    return sorted(order[:k].tolist())


def keep_every_member(keep, group, p):
    """Each member layer keeps at least one of its channels: in a concatenation a group spans
    several branches, and a group-wide rule could otherwise empty one branch entirely."""
    keep = set(keep)
    for _, _, root_idxs in group.members:
        if root_idxs and not keep.intersection(root_idxs):
            keep.add(max(root_idxs, key=lambda i: float(p[i])))
    return sorted(keep)


def keep_top(p, k):
    """The k largest contributions' indices, sorted."""
    return sorted(torch.argsort(p.double(), descending=True, stable=True)[:k].tolist())


def plan_removals(groups, contributions, rule, value, *, multiple=1, snap=None):
    """Per group root, the channel indices to remove under one rule.

    rule: 'cr' (value = cumulative contribution rate), 'ratio' (one ratio for every group),
    'ratios' (value = {layer name: ratio}, matched on the group root or any member layer), or
    'counts' (value = {group root: channels kept}: counts you chose for your hardware).
    `snap(group, k) -> k' >= k` moves a group's count to one the deployment engine runs fast.
    """
    removals, kept = {}, {}
    if rule == "counts":
        unknown = sorted(set(value) - {g.root for g in groups})
        if unknown:
            raise ConvslimError(f"counts name {', '.join(map(repr, unknown[:3]))}, which is no group root; "
                                f"group roots: {', '.join(sorted(g.root for g in groups)[:8])}")
    if rule == "ratios":
        known = {name for g in groups for name in [g.root, *g.layers]}
        unknown = sorted(set(value) - known)
        if unknown:
            roots = sorted(g.root for g in groups)
            raise ConvslimError(f"ratios name {', '.join(map(repr, unknown[:3]))}, which no prunable layer is called; "
                                f"prunable layers: {', '.join(roots[:8])}{', ...' if len(roots) > 8 else ''}")
        bad = {k: v for k, v in value.items() if not 0 <= v < 1}
        if bad:
            name, ratio = next(iter(bad.items()))
            raise ConvslimError(f"ratio for {name!r} must be in [0, 1), got {ratio}")
    for g in groups:
        p = contributions[g.root]
        if rule == "cr":
            keep = keep_cumulative(p, value, multiple)
        elif rule == "ratio":
            keep = keep_ratio(p, value, multiple)
        elif rule == "counts":
            c = value.get(g.root, g.size)
            if c != int(c) or not 1 <= c <= g.size:
                raise ConvslimError(f"group {g.root!r} has {g.size} channels; cannot keep {c}")
            keep = keep_top(p, int(c))
        elif rule == "ratios":
            ratio = next((value[n] for n in [g.root, *g.layers] if n in value), 0.0)
            keep = keep_ratio(p, ratio, multiple)
        else:
            raise ConvslimError(f"unknown rule {rule!r}")
        if snap is not None:
            keep = keep_top(p, max(len(keep), snap(g, len(keep))))
        keep = keep_every_member(keep, g, p)
        kept[g.root] = keep
        drop = sorted(set(range(g.size)) - set(keep))
        if drop:
            removals[g.root] = drop
    return removals, kept
