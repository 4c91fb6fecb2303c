"""What an architecture spec names, as a bare nn.Module: a zoo name, or a user's factory given as
`file.py:factory` or `package.module:factory` (called with num_classes / in_channels / width when
its signature accepts them); and which one tensor of its output convslim works on.

Below both checkpoint (which rebuilds the architecture a file records) and modelspec (which turns
what the user typed after --model into a model), so neither has to import the other's way round.
"""
from pathlib import Path

import torch
from torch import nn

from . import models
from .errors import ConvslimError
from .usercode import call_factory, import_factory


def _build_factory_model(spec, **kwargs):
    model = call_factory(import_factory(spec), spec, **kwargs)
    if not isinstance(model, nn.Module):
        raise ConvslimError(f"factory {spec} returned {type(model).__name__}, not an nn.Module")
    return model


def canonical_spec(spec):
    """Store user files by absolute path so a checkpoint loads from any working directory."""
    target, sep, attr = spec.rpartition(":")
    if sep and target.endswith(".py"):
        return f"{Path(target).resolve()}:{attr}"
    return spec


def is_factory(spec):
    """A `module:factory` or `file.py:factory` spec (not a zoo name, not an existing file)."""
    return ":" in spec and not Path(spec).exists()


def is_zoo(spec):
    return spec in models.available()


def create(spec, *, num_classes=10, in_channels=3, width=1.0):
    """A fresh model of the spec (zoo name or canonical factory spec), without convslim's record."""
    if is_factory(spec):
        return _build_factory_model(spec, num_classes=num_classes, in_channels=in_channels,
                             width=width)
    return models.create(spec, num_classes=num_classes, in_channels=in_channels, width=width)


def parse_output(key):
    """--output as typed: an index for a tuple/list output, a key for a dict output."""
    if key is None or isinstance(key, int):
        return key
    return int(key) if str(key).lstrip("-").isdigit() else str(key)


def select_output(model, key):
    """Make a model whose forward returns a tuple, list or dict return the one tensor `key` names,
    with a forward hook, so its state dict and layer names stay as they are."""
    key = parse_output(key)

    def pick(module, inputs, output):
        try:
            return output[key]
        except (IndexError, KeyError, TypeError):
            raise ConvslimError(f"output {key!r} not found in the model's {type(output).__name__} output") from None

    model.register_forward_hook(pick)
    return model


def check_output(model, input_shape):
    """A model convslim can work on returns one tensor (returned); a tuple or dict needs `output`."""
    was_training = model.training
    device = next(model.parameters(), torch.empty(0)).device
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape, device=device))
    except ConvslimError:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvslimError(f"the model fails on an input of shape {tuple(input_shape)}: {msg}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        keys = list(out.keys()) if isinstance(out, dict) else list(range(len(out))) if isinstance(out, (tuple, list)) else []
        raise ConvslimError(f"the model's forward returns a {type(out).__name__}, not a tensor; choose the "
                            f"logits with --output KEY (one of {keys[:6]}; in Python: convslim.select_output(model, KEY))")
    return out
