"""Remove channels for real with torch-pruning's DependencyGraph.

Every removal is recorded as torch-pruning's pruning history (root layer name, out/in, indices),
so a saved model stores only its base architecture plus that history; `convslim.graph` traces the
graph and replays the history on load.
"""
from ..errors import ConvslimError
from ..graph import build_graph, plain_indices


def remove_channels(model, removals, example_input, graph=None):
    """Remove output channels in place: `removals` maps a layer name to the indices to drop.

    Coupled layers (residual adds, concatenations, depthwise convs, BatchNorm) follow through the
    dependency graph. Returns the pruning history entries this call appended, ready to save.
    """
    graph = graph or build_graph(model, example_input)
    modules = dict(model.named_modules())
    history = []
    for name, idxs in removals.items():
        idxs = plain_indices(idxs)
        if not idxs:
            continue
        if name not in modules:
            raise ConvslimError(f"no layer named {name!r} in the model")
        module = modules[name]
        pruner = graph.get_pruner_of_module(module)
        if pruner is None:
            raise ConvslimError(f"layer {name!r} ({type(module).__name__}) has no channel pruner")
        n_out = pruner.get_out_channels(module)
        if n_out is not None and len(idxs) >= n_out:
            raise ConvslimError(f"refusing to remove all {n_out} channels of layer {name!r}")
        group = graph.get_pruning_group(module, pruner.prune_out_channels, idxs)
        group.prune()
        history.append([name, True, idxs])
    return history
