"""Turn what the user typed after --model into a model: a zoo name, a factory, or a checkpoint.

`file.py:factory` and `package.module:factory` let users bring their own nn.Module; the factory
gets num_classes / in_channels / width when its signature accepts them.
"""
import importlib
import importlib.util
import inspect
from pathlib import Path

import torch
from torch import nn

from . import models
from .checkpoint import Record, attach, load_state
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


def is_zoo(spec):
    return spec in models.available()


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
                            f"logits with --output KEY (one of {keys[:6]}; in Python: output=KEY)")
    return out


def build_model(spec, *, num_classes=10, in_channels=3, width=1.0, input_shape=None, weights=None, output=None,
                check=True):
    """Build a fresh model from a spec and attach the record needed to save and reload it.
    `output` picks the tensor to work on when forward returns a tuple, list or dict. `weights` is a
    state dict, or a convslim .pt made from this same code: its removals and edits are replayed."""
    if weights is not None and is_convslim_file(weights):
        from .checkpoint import read, rebuild

        payload = read(weights)
        arch = payload["arch"]
        base = build_model(spec, num_classes=arch["num_classes"], in_channels=arch["in_channels"], width=arch["width"],
                           input_shape=payload["input_shape"], output=arch.get("output") if output is None else output)
        return rebuild(payload, weights, model=base)
    if ":" in spec and not Path(spec).exists():
        spec = canonical_spec(spec)
        model = _call_factory(_import_factory(spec), spec, num_classes=num_classes,
                              in_channels=in_channels, width=width)
    else:
        model = models.create(spec, num_classes=num_classes, in_channels=in_channels, width=width)
    shape = list(input_shape) if input_shape else [in_channels, 32, 32]
    arch = {"model": spec, "num_classes": num_classes, "in_channels": in_channels, "width": width}
    if output is not None:
        select_output(model, output)
        arch["output"] = parse_output(output)
    if check:
        check_output(model, shape)
    attach(model, Record(arch=arch, input_shape=shape))
    if weights is not None:
        load_state(model, read_weights(weights), weights)
    return model


def is_convslim_file(path):
    from .checkpoint import FORMAT, load_safely

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
    from .checkpoint import load

    if spec.endswith(".pt") or Path(spec).is_file() and not spec.endswith(".py"):
        return load(spec)
    return build_model(spec, **kwargs)
