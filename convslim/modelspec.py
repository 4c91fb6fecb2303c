"""Turn what the user typed after --model into a model: a zoo name, a factory, or a checkpoint.

`file.py:factory` and `package.module:factory` let users bring their own nn.Module; the factory
gets num_classes / in_channels / width when its signature accepts them (convslim.architecture).
Above checkpoint: `--model m.pt` and `--weights m.pt` load a saved model.
"""
from pathlib import Path

import torch

from .checkpoint import FORMAT, load, load_safely, load_state, new_model, read, rebuild
from .errors import ConvslimError


def build_model(spec, *, num_classes=10, in_channels=3, width=1.0, input_shape=None, weights=None, output=None,
                check=True):
    """Build a fresh model from a spec and attach the record needed to save and reload it.
    `output` picks the tensor to work on when forward returns a tuple, list or dict. `weights` is a
    state dict, or a convslim .pt made from this same code: its removals and edits are replayed."""
    if weights is not None and is_convslim_file(weights):
        payload = read(weights)
        arch = payload["arch"]
        base = build_model(spec, num_classes=arch["num_classes"], in_channels=arch["in_channels"], width=arch["width"],
                           input_shape=payload["input_shape"], output=arch.get("output") if output is None else output)
        return rebuild(payload, weights, model=base)
    model = new_model(spec, num_classes=num_classes, in_channels=in_channels, width=width, input_shape=input_shape,
                      output=output, check=check)
    if weights is not None:
        load_state(model, read_weights(weights), weights)
    return model


def is_convslim_file(path):
    payload = load_safely(path, "weights file")
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def read_weights(path):
    """A user's state dict (bare, or under 'state_dict' / 'model'), read with weights_only."""
    path = Path(path)
    if not path.exists():
        raise ConvslimError(f"weights file not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConvslimError(f"{path} is not a state dict torch can read safely ({type(exc).__name__})") from exc
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConvslimError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def resolve(spec, **kwargs):
    """--model as typed: an existing .pt is loaded, anything else is built."""
    if spec.endswith(".pt") or Path(spec).is_file() and not spec.endswith(".py"):
        return load(spec)
    return build_model(spec, **kwargs)
