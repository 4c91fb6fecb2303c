"""Saved models: base architecture + channel-removal history + weights, loaded with weights_only.

A `.pt` file is a plain dict of tensors, strings and numbers, so `torch.load(weights_only=True)`
reads it and no pickled code runs. The model is rebuilt from its architecture spec (a zoo name or
a user factory), the recorded channel removals are replayed with torch-pruning, then the weights
are loaded strictly. `Record` travels on the model object so every step can save what it changed.

Structural edits that are not channel removals (a layer decomposed or converted) are recorded as
plain dicts {"op": ..., "layer": ..., ...} in `Record.edits`, each with the length of the removal
history when it was made, and replayed in that order by the function registered for the op in
`EDIT_REPLAYERS`. This module names no compression family: each family registers its replayers
(and `BEFORE_SAVE` steps) when it is imported, and `import convslim` imports them all.
"""
import copy
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .architecture import canonical_spec, check_output, create, is_factory, is_zoo, parse_output, select_output
from .batches import split_batch
from .device import device_of
from .errors import ConvslimError
from .fileio import atomic_path, check_output_path
from .graph import replay_history

FORMAT = "convslim-checkpoint/1"
RECORD_ATTR = "convslim_record"

# op -> fn(model, edit) rebuilding the edited layer's structure (weights come later, strictly);
# filled by the family that makes the edit, when it is imported.
EDIT_REPLAYERS = {}
# fn(model) run before a model is written, bringing its record in line with the model (e.g. input
# transforms added or stripped since they were recorded); filled as EDIT_REPLAYERS is.
BEFORE_SAVE = []


@dataclass
class Record:
    """How to rebuild a model without its code: factory spec, input shape, removals, metadata."""

    arch: dict
    input_shape: list
    history: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    edits: list = field(default_factory=list)

    def to_dict(self):
        return {"arch": self.arch, "input_shape": list(self.input_shape),
                "history": self.history, "meta": self.meta, "edits": self.edits}

    def add_edit(self, op, **fields):
        """Remember a structural edit, placed after the channel removals made so far."""
        self.edits.append({"op": op, **fields, "after": len(self.history)})


def attach(model, record):
    object.__setattr__(model, RECORD_ATTR, record)
    return model


def record_of(model):
    """The model's Record; a plain module gets one from `ensure_record` when convslim first needs it."""
    model = getattr(model, "module", model)  # unwrap DDP
    rec = getattr(model, RECORD_ATTR, None)
    if rec is None:
        raise ConvslimError("convslim does not know this model's input yet: pass example_input "
                            "(a tensor or a shape such as (3, 32, 32))")
    return rec


def input_shape_of(example_input):
    """(C, H, W) from an example input: a batched tensor, or a shape with or without the batch."""
    if isinstance(example_input, torch.Tensor):
        return [int(v) for v in example_input.shape[1:]]
    shape = [int(v) for v in example_input]
    if len(shape) < 1 or any(v < 1 for v in shape):
        raise ConvslimError(f"example input shape must be positive sizes such as (3, 32, 32), got {example_input}")
    return shape


def code_spec(model):
    """Where a user's module class lives, recorded so a saved file can say which code it needs."""
    cls = type(model)
    return f"{cls.__module__}:{cls.__qualname__}"


def ensure_record(model, example_input=None, batches=None):
    """Give a plain nn.Module the record convslim keeps (input shape, removals, metadata), or update
    the input shape of a model that has one when an example input is given. The shape comes from
    `example_input`, else from the first of `batches`."""
    model = getattr(model, "module", model)
    rec = getattr(model, RECORD_ATTR, None)
    if example_input is None and batches is not None:   # the data shows the real input size
        shape = getattr(batches, "input_shape", None)     # convslim Splits know it without a batch
        example_input = shape if shape is not None else split_batch(next(iter(batches)))[0]
    if example_input is None:
        return record_of(model)
    shape = input_shape_of(example_input)
    if rec is None:
        out = check_output(model, shape)
        rec = Record(arch={"model": code_spec(model), "num_classes": int(out.shape[1]) if out.ndim > 1 else 1,
                           "in_channels": shape[0], "width": 1.0}, input_shape=shape)
        attach(model, rec)
    else:
        rec.input_shape = shape
    return rec


def example_input(model, batch=1, device=None):
    """A random input of the recorded shape, for tracing, export and latency; on the model's
    device unless `device` is given."""
    return torch.randn(batch, *record_of(model).input_shape, device=device or device_of(model))


def save(model, path, *, inputs=(), **meta):
    """Write model + record atomically; never overwrite an input file.

    The `BEFORE_SAVE` steps run first: input transforms the model carries (calibrated activation
    quantizers, XNOR input binarisation, e.g. a decoded .csz) are recorded as edits there so that
    loading restores them. The written file is read back (torch.load with weights_only) and must
    hold the same record and the same tensors before it is moved into place.
    """
    out = check_output_path(path, inputs=inputs)
    model = getattr(model, "module", model)
    rec = record_of(model)
    rec.meta.update(meta)
    for step in BEFORE_SAVE:
        step(model)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, **copy.deepcopy(rec.to_dict()), "state_dict": state}

    def digest(t):          # CRC-32 of the raw bytes: a fraction of the cost of comparing two copies
        try:
            return t.dtype, tuple(t.shape), zlib.crc32(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
        except (RuntimeError, TypeError):   # a dtype numpy cannot view (quantized): dtype and shape only
            return t.dtype, tuple(t.shape)

    def same(a, b):
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and digest(a) == digest(b)
        if isinstance(b, dict):
            return isinstance(a, dict) and list(a) == list(b) and all(same(a[k], v) for k, v in b.items())
        if isinstance(b, (list, tuple)):
            return isinstance(a, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
        return a == b or (a != a and b != b)          # NaN reads back as NaN

    expected = {k: digest(v) for k, v in state.items()}

    def check(tmp):
        try:
            back = torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise ConvslimError(f"{out} was not written: torch cannot read it back safely "
                                f"({type(exc).__name__})") from exc
        if not isinstance(back, dict) or set(back) != set(payload) or not all(
                same(back[k], v) for k, v in payload.items() if k != "state_dict"):
            raise ConvslimError(f"{out} was not written: reading it back gave a different record")
        got = back["state_dict"]
        if not isinstance(got, dict) or list(got) != list(state) or not all(
                isinstance(got[k], torch.Tensor) and digest(got[k]) == d for k, d in expected.items()):
            raise ConvslimError(f"{out} was not written: reading it back gave different weights")
        del back, got                       # the mapped file is let go before it is moved into place

    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:          # through a file object, as fileio.torch_save_atomic
            torch.save(payload, f)
        check(tmp)
    return out


def load_safely(path, what="checkpoint"):
    """torch.load with weights_only, each way of failing named in one line."""
    path = Path(path)
    if not path.exists():
        raise ConvslimError(f"file not found: {path}")
    if path.is_dir():
        raise ConvslimError(f"{path} is a folder, expected a {what} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConvslimError(f"{path} is not a {what} torch can read safely ({type(exc).__name__})") from exc


def read(path):
    """The raw checkpoint dict, with each way of being wrong reported in one line."""
    path = Path(path)
    payload = load_safely(path)
    if not isinstance(payload, dict):
        raise ConvslimError(f"{path} is not a checkpoint (holds a {type(payload).__name__})")
    if payload.get("format") != FORMAT:
        if all(isinstance(v, torch.Tensor) for v in payload.values()):
            raise ConvslimError(f"{path} is a bare state dict; pass --model NAME_OR_FACTORY --weights {path}")
        raise ConvslimError(f"{path} is not a convslim checkpoint")
    return payload


def load_state(model, state_dict, source):
    """Load weights strictly, naming the first key or shape that does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise ConvslimError(f"weights in {source} do not fit the model: {what} "
                            f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    for k, v in own.items():
        if tuple(state_dict[k].shape) != tuple(v.shape):
            raise ConvslimError(f"weights in {source} do not fit the model: {k} has shape "
                                f"{tuple(state_dict[k].shape)}, the model expects {tuple(v.shape)}")
    model.load_state_dict(state_dict)
    return model


def new_model(spec, *, num_classes=10, in_channels=3, width=1.0, input_shape=None, output=None, check=True):
    """A fresh, unpruned model of an architecture spec with its Record attached: the model every
    load starts from. `output` picks the tensor to work on when forward returns a tuple, list or
    dict; `check` runs it once on a zero input to say so in one line when it does not fit."""
    if is_factory(spec):
        spec = canonical_spec(spec)
    model = create(spec, num_classes=num_classes, in_channels=in_channels, width=width)
    shape = list(input_shape) if input_shape else [in_channels, 32, 32]
    arch = {"model": spec, "num_classes": num_classes, "in_channels": in_channels, "width": width}
    if output is not None:
        select_output(model, output)
        arch["output"] = parse_output(output)
    if check:
        check_output(model, shape)
    return attach(model, Record(arch=arch, input_shape=shape))


def replay(model, history, edits, example_input):
    """Redo channel removals and structural edits on a fresh base model, in the order made."""
    done = 0
    for edit in edits:
        if edit.get("op") not in EDIT_REPLAYERS:
            raise ConvslimError(f"checkpoint holds an edit this convslim cannot replay: {edit.get('op')!r}")
        at = int(edit.get("after", len(history)))
        replay_history(model, history[done:at], example_input)
        done = max(done, at)
        EDIT_REPLAYERS[edit["op"]](model, edit)
    replay_history(model, history[done:], example_input)
    return model


def rebuild(payload, source, *, model=None, trust_code=False):
    """A model from a checkpoint dict: architecture, replayed removals and edits, weights.

    The file may name a zoo model. It never chooses other code to run: a model built from a user's
    factory is rebuilt only on that user's explicit word, by passing the freshly built base `model`
    (the CLI's `--model file.py:factory --weights m.pt`) or `trust_code=True`.
    """
    arch = payload["arch"]
    spec = str(arch.get("model"))
    if model is not None:
        ensure_record(model, payload["input_shape"])
    else:
        if not (is_zoo(spec) or trust_code):
            raise ConvslimError(f"{source} was made from code outside convslim's zoo ({spec!r}), and a model file "
                                f"never chooses which code runs: pass that code yourself, --model FILE.py:FACTORY "
                                f"--weights {source} (Python: convslim.load(path, model=YourNet()))")
        model = new_model(spec, num_classes=arch["num_classes"], in_channels=arch["in_channels"],
                          width=arch["width"], input_shape=payload["input_shape"], output=arch.get("output"),
                          check=False)
    edits = [dict(e) for e in payload.get("edits", [])]
    device = next(model.parameters()).device
    replay(model, payload["history"], edits, torch.randn(1, *payload["input_shape"], device=device))
    load_state(model, payload["state_dict"], source)
    rec = record_of(model)
    rec.input_shape = list(payload["input_shape"])
    rec.history = [list(h) for h in payload["history"]]
    rec.edits = edits
    rec.meta = dict(payload.get("meta", {}))
    return model.eval()


def load(path, *, model=None, trust_code=False):
    """Rebuild a saved model (architecture, replayed channel removals and edits, weights) in eval mode.

    A model made from your own code is rebuilt onto `model`, a fresh instance of the original
    (unpruned) module you build yourself, or with `trust_code=True`, which imports the code the file
    names; a file never chooses code to run on its own."""
    return rebuild(read(path), path, model=model, trust_code=trust_code)
