"""Channel counts the deployment engine runs fast: the pruner's per-group counts, snapped up.

A group's count c sets the output width of its member convs and the input width of the convs
that read it. From the latency table (convslim.latency), the group's cost at c is the sum of
those layers' measured times; the pruner's count k moves up to the smallest count at or above k
that is within `tolerance` of the cheapest count at or above k. So a count never goes down
(no importance the rule kept is lost), and never further up than the next fast count: 17 output
channels that cost what 32 cost become 32 only when nothing between is cheaper; 23 input channels
that cost twice what 24 cost become 24. With several tables (batch 1 and batch 64, say) each
table's cost is taken relative to the group's unpruned cost and the shares are added.
"""
from ..checkpoint import example_input
from ..latency import LatencyTable, conv_layers, current_counts, sweep_counts


def _tables(latency):
    return list(latency) if isinstance(latency, (list, tuple)) else [latency]


def _width(n, group_size, c, share):
    """A layer's width when its group keeps c of group_size channels, `share` of which it holds."""
    return max(1, n - round((group_size - c) * share / group_size))


def group_cost(group, layers, table):
    """{count: ms} for one group on one table: its member convs' outputs and its readers' inputs."""
    costs = {}
    for c in sweep_counts(group.size):
        total = 0.0
        for name, idxs, _ in group.members:
            if name in layers:
                l = layers[name]
                total += table.layer_ms(l, l.in_channels, _width(l.out_channels, group.size, c, len(idxs)))
        for name, idxs, _ in group.consumers:
            if name in layers and not layers[name].shape.depthwise:
                l = layers[name]
                total += table.layer_ms(l, _width(l.in_channels, group.size, c, len(idxs)), l.out_channels)
        costs[c] = total
    return costs


class LatencySnap:
    """`snap(group, k)`: the group's count moved up to a fast one. Built once per model and table
    set (it measures what the cache lacks), then used for every candidate of a search."""

    def __init__(self, model, groups, latency, tolerance=0.03):
        self.tables = _tables(latency)
        self.tolerance = tolerance
        self.layers = conv_layers(model, example_input(model))
        for table in self.tables:
            table.curves(self.layers.values())
        self.costs = {}
        for g in groups:
            per_table = [group_cost(g, self.layers, t) for t in self.tables]
            self.costs[g.root] = {c: sum(cost[c] / (cost[g.size] or 1.0) for cost in per_table)
                                  for c in per_table[0]}

    def __call__(self, group, k):
        cost = self.costs.get(group.root)
        if not cost:
            return k
        above = [c for c in cost if c >= k] or [max(cost)]
        cheapest = min(cost[c] for c in above)
        return min(c for c in above if cost[c] <= cheapest * (1 + self.tolerance))

    def predict_ms(self, model, table=None):
        """The conv layers' summed time for `model` (a pruned copy of the model this was built on)
        on one table: what a search compares with a latency target before measuring."""
        return (table or self.tables[0]).model_ms(self.layers, current_counts(model))


__all__ = ["LatencySnap", "LatencyTable", "group_cost"]
