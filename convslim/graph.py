"""A model's dependency graph (torch-pruning) and the replay of recorded channel removals.

In the core because loading any saved model needs it, whichever family made the file: a saved
model stores only its base architecture plus torch-pruning's pruning history (root layer name,
out/in, indices), and `replay_history` redoes those removals on a freshly built base model.
`convslim.pruning` makes the removals; this module only traces and replays.
"""
import torch
import torch_pruning as tp

from .device import device_of
from .errors import ConvslimError


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


def plain_indices(idxs):
    """Channel indices as a sorted list of ints, the form a pruning history stores."""
    return sorted(int(i) for i in idxs)


def replay_history(model, history, example_input):
    """Redo recorded removals on a freshly built base model (used when loading a checkpoint)."""
    if not history:
        return model
    graph = build_graph(model, example_input)
    graph.load_pruning_history([[n, bool(out), plain_indices(i)] for n, out, i in history])
    return model
