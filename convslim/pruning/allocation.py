"""Whole-network channel allocation over fast counts: HALP's idea, solved greedily.

Snapping each group's count up after the cr rule (LatencySnap) keeps the rule's counts and adds
cost, so a FLOPs or time target then cuts every group deeper to pay for the snaps, and the counts
that result are fast one by one but not chosen together. HALP (Shen et al., NeurIPS 2022)
chooses all counts at once: the most importance kept under a latency budget. Here each group may
only take its fast counts (the counts the latency table's snap leaves where they are), every
group starts at full width, and the group whose next fast count down loses the least importance
per unit of cost saved steps down, until the cost meets the goal. Importance lost is the share
of the group's contribution that the step drops (each group's contributions sum to 1, as the cr
rule reads them); cost is FLOPs (counted from the conv shapes) or the table's predicted time.
The greedy's cost is an estimate; `allocate` corrects the goal until the pruned model itself
meets it.
"""
import torch

from ..checkpoint import example_input
from ..errors import ConvslimError
from ..metrics import count

METRICS = ("flops", "latency")


def conv_flops(layer, c_in, c_out):
    """Multiply-accumulates of one conv at these channel counts (its output size from its shape)."""
    s = layer.shape
    h = (s.height + 2 * s.padding[0] - s.dilation[0] * (s.kernel[0] - 1) - 1) // s.stride[0] + 1
    w = (s.width + 2 * s.padding[1] - s.dilation[1] * (s.kernel[1] - 1) - 1) // s.stride[1] + 1
    per_pixel = s.kernel[0] * s.kernel[1] * (c_out if s.depthwise else c_in * c_out)
    return h * w * per_pixel


class Allocator:
    """The groups' fast counts, the importance each count keeps, and the conv layers' cost at any
    assignment of counts, in FLOPs or in the snap's predicted time (each table's time relative to
    the unpruned model's, summed over tables)."""

    def __init__(self, importance, snap):
        self.snap = snap
        self.groups = {g.root: g for g in importance.groups}
        self.layers = snap.layers
        self.kept_share, self.fast = {}, {}
        for root, g in self.groups.items():
            p = torch.sort(importance.contributions[root].double(), descending=True).values
            self.kept_share[root] = [0.0, *torch.cumsum(p, 0).tolist()]
            counts = snap.costs.get(root)
            fast = {c for c in counts if snap(g, c) == c} if counts else set(range(1, g.size + 1))
            self.fast[root] = sorted(fast | {g.size})
        # per conv layer: (group root, channels of the group it holds) for its outputs and inputs
        self.out_of = {n: [] for n in self.layers}
        self.in_of = {n: [] for n in self.layers}
        self.touches = {root: set() for root in self.groups}
        for root, g in self.groups.items():
            for name, idxs, _ in g.members:
                if name in self.layers:
                    self.out_of[name].append((root, len(idxs)))
                    self.touches[root].add(name)
            for name, idxs, _ in g.consumers:
                if name in self.layers and not self.layers[name].shape.depthwise:
                    self.in_of[name].append((root, len(idxs)))
                    self.touches[root].add(name)
        self.full_counts = {r: g.size for r, g in self.groups.items()}
        self.base_ms = [t.model_ms(self.layers) for t in snap.tables]
        self.full = {m: {n: self.layer_cost(n, self.full_counts, m) for n in self.layers} for m in METRICS}
        # a group's importance is worth the work it feeds: a residual stage's channels run through
        # every conv of the stage, a block's inner channels through two
        self.weight = {r: sum(self.full["flops"][n] for n in self.touches[r]) for r in self.groups}

    def widths(self, name, counts):
        """(c_in, c_out) of one conv when the groups keep `counts`."""
        layer = self.layers[name]

        def width(n, held):
            return max(1, n - sum(round((self.groups[r].size - counts[r]) * k / self.groups[r].size) for r, k in held))

        c_out = width(layer.out_channels, self.out_of[name])
        c_in = c_out if layer.shape.depthwise else width(layer.in_channels, self.in_of[name])
        return c_in, c_out

    def layer_cost(self, name, counts, metric):
        layer, (c_in, c_out) = self.layers[name], self.widths(name, counts)
        if metric == "flops":
            return conv_flops(layer, c_in, c_out)
        return sum(t.layer_ms(layer, c_in, c_out) / ms for t, ms in zip(self.snap.tables, self.base_ms))

    def greedy(self, goal, limit="flops", rank="latency"):
        """Counts per group root whose estimated `limit` cost is at most `goal`, stepping down the
        group that loses the least importance per unit of `rank` cost saved."""
        counts = dict(self.full_counts)
        costs = {m: dict(self.full[m]) for m in METRICS}
        total = sum(costs[limit].values())
        while total > goal:
            best = None
            for root in self.groups:
                lower = [c for c in self.fast[root] if c < counts[root]]
                if not lower:
                    continue
                trial = {**counts, root: lower[-1]}
                new = {m: {n: self.layer_cost(n, trial, m) for n in self.touches[root]} for m in METRICS}
                saved = {m: sum(costs[m][n] - new[m][n] for n in new[m]) for m in METRICS}
                if saved[rank] <= 0 or saved[limit] <= 0:
                    continue
                lost = self.weight[root] * (self.kept_share[root][counts[root]] - self.kept_share[root][lower[-1]])
                score = lost / saved[rank]
                if best is None or score < best[0]:
                    best = (score, root, lower[-1], new, saved)
            if best is None:
                break                       # every group is at its smallest fast count
            _, root, c, new, saved = best
            counts[root] = c
            for m in METRICS:
                costs[m].update(new[m])
            total -= saved[limit]
        return counts


def allocate(model, importance, snap, goal, *, metric="flops", rank="latency", tries=8):
    """{group root: count} for `model`: the greedy allocation above, ranked on `rank` cost saved,
    until the pruned copy has at most `goal` FLOPs (metric "flops", counted on the pruned model,
    the greedy's goal tightened until it does) or a predicted time of at most `goal` as a share of
    the unpruned model's (metric "latency")."""
    from .prune import apply_rule

    if metric not in METRICS or rank not in METRICS:
        raise ConvslimError(f"allocation limits and ranks on flops or latency, got {metric!r} and {rank!r}")
    alloc = Allocator(importance, snap)
    if metric == "latency":
        return alloc.greedy(goal * len(snap.tables), "latency", rank)
    x = example_input(model)
    base_estimate, base_flops = sum(alloc.full["flops"].values()), count(model, x)["flops"]
    estimate = base_estimate * goal / base_flops      # the convs' share of the goal
    for _ in range(tries):
        counts = alloc.greedy(estimate, "flops", rank)
        flops = count(apply_rule(model, importance, "counts", counts)[0], x)["flops"]
        if flops <= goal:
            return counts
        estimate -= (flops - goal) * base_estimate / base_flops + 1
    raise ConvslimError(f"no allocation of fast channel counts reaches {goal:,.4g} FLOPs (the closest found has "
                        f"{flops:,.4g}): ask for fewer or prune without --latency-aware")
