"""What an architecture spec names, as a bare nn.Module: a zoo name, or a user's factory given as
`file.py:factory` or `package.module:factory` (called with num_classes / in_channels / width when
its signature accepts them); and which one tensor of its output convslim works on.

Below both checkpoint (which rebuilds the architecture a file records) and modelspec (which turns
what the user typed after --model into a model), so neither has to import the other's way round.
"""
import importlib
import importlib.util
import inspect
from pathlib import Path

import torch
from torch import nn

from . import models
from .errors import ConvslimError


def _import_factory(spec):
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.exists():
            raise ConvslimError(f"model file not found: {path}")
        mod_spec = importlib.util.spec_from_file_location(f"convslim_user_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            raise ConvslimError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConvslimError(f"cannot import module {target!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConvslimError(f"{target} has no callable {attr!r}")
    return factory


def _call_factory(factory, spec, **kwargs):
    params = inspect.signature(factory).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = {k: v for k, v in kwargs.items() if takes_all or k in params}
    try:
        model = factory(**accepted)
    except Exception as exc:
        raise ConvslimError(f"factory {spec} failed: {type(exc).__name__}: {exc}") from exc
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
        return _call_factory(_import_factory(spec), spec, num_classes=num_classes, in_channels=in_channels,
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
