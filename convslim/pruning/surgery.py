"""Remove channels for real with torch-pruning's DependencyGraph, and replay removals on load.

Every removal is recorded as torch-pruning's pruning history (root layer name, out/in, indices),
so a saved model stores only its base architecture plus that history and rebuilds without pickled
code: `replay_history` redoes the same removals on a freshly built base model.
"""
import torch
import torch_pruning as tp

from ..checkpoint import device_of
from ..errors import ConvslimError


def build_graph(model, example_input):
    """Trace `model` into a DependencyGraph (the example runs on the model's device); a model it
    cannot trace is a user-facing error."""
    if isinstance(example_input, torch.Tensor):
        example_input = example_input.to(device_of(model))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except ConvslimError:
        raise
    except Exception as exc:  # torch-pruning raises many kinds; the user needs one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvslimError(f"torch-pruning cannot trace this model's graph: {msg}") from exc
    finally:
        model.train(was_training)
    lost = [n for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m not in graph.module2node]
    if lost:
        raise ConvslimError(f"torch-pruning cannot trace this model's graph: layer {lost[0]!r} is not reached "
                            f"by autograd (no_grad, detach or non-tensor ops in forward?)")
    return graph


def _plain(idxs):
    return sorted(int(i) for i in idxs)


def remove_channels(model, removals, example_input, graph=None):
    """Remove output channels in place: `removals` maps a layer name to the indices to drop.

    Coupled layers (residual adds, concatenations, depthwise convs, BatchNorm) follow through the
    dependency graph. Returns the pruning history entries this call appended, ready to save.
    """
    graph = graph or build_graph(model, example_input)
    modules = dict(model.named_modules())
    history = []
    for name, idxs in removals.items():
        idxs = _plain(idxs)
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


def replay_history(model, history, example_input):
    """Redo recorded removals on a freshly built base model (used when loading a checkpoint)."""
    if not history:
        return model
    graph = build_graph(model, example_input)
    graph.load_pruning_history([[n, bool(out), _plain(i)] for n, out, i in history])
    return model
