"""One forward pass with hooks attached: how convslim measures what happens inside a model (layer
shapes and costs, stage outputs, channel importance, feature-map ranks).

The hooks do the measuring; this module only guarantees the frame around them: eval mode, no
gradients, and afterwards the model's train mode restored and every hook removed, even when the
forward pass fails.
"""
import torch

from .errors import ConvslimError


def run_with_hooks(model, hooks, inputs, *, pre=False):
    """Run `model` over `inputs` (one batch tensor, or an iterable of them) with `hooks`
    ({module or layer name: hook}) attached as forward hooks, or as forward pre-hooks with `pre`.
    Returns the number of images seen."""
    modules = dict(model.named_modules())
    targets = []
    for key, fn in hooks.items():
        if isinstance(key, str):
            if key not in modules:
                raise ConvslimError(f"no layer named {key!r} in the model")
            key = modules[key]
        targets.append((key, fn))
    handles = [m.register_forward_pre_hook(fn) if pre else m.register_forward_hook(fn) for m, fn in targets]
    was_training = model.training
    model.eval()
    images = 0
    try:
        with torch.no_grad():
            for x in [inputs] if isinstance(inputs, torch.Tensor) else inputs:
                model(x)
                images += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return images
