"""The compressed model file: codebooks plus coded indices, decoded back to the identical model.

Layout: an 8-byte magic, an 8-byte header length, a JSON header, then the binary blobs.
The header holds the model's full convslim record (architecture, input shape, channel removals,
structural edits such as decomposed or converted layers, metadata) and one entry per state-dict
tensor:
- quantized weights: a codebook (one row per output channel, or one row per layer) and one code
  per weight, stored either packed at ceil(log2 K) bits each or Huffman-coded (code lengths in
  the header, canonical codes, so the table costs K bytes); with `coding="huffman"` a layer whose
  Huffman stream would not be smaller than fixed width (two symbols, say) stays packed;
- everything else (biases, BatchNorm, unquantized layers, activation ranges): raw bytes in the
  tensor's dtype.
Nothing is pickled, so opening a file runs no code. The decoded weights are codebook[codes],
bit for bit what `fakequant.strip` bakes into the model.

What a layer does to its input is part of the model too: calibrated activation quantizers
(lowbit with `abits`) and XNOR input binarisation are recorded as edits ("quantize_inputs",
"xnor_inputs", derived from the model's structure whenever it is written, here or by
`checkpoint.save`) and replayed on decode, so a decoded file is exactly the model that was
evaluated, and a decoded model can be saved or coded again. A plain model whose conv and linear
weights take few values (a decoded model) is coded losslessly: the values themselves become the
codebook.

Every file is read back before it is moved into place: the header and every decoded tensor must
equal what was encoded, and the model must rebuild from it (replayed removals and edits, strict
weight loading).
"""
import copy
import json
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import BEFORE_SAVE, EDIT_REPLAYERS, record_of
from ..errors import ConvslimError
from ..fileio import atomic_path, check_output_path
from . import huffman
from .binarize import _xnor_pre, binarize_inputs
from .fakequant import ActQuant, _quantize_input, encode, lookup, without_input_quantizers
from .quantizers import QuantSpec

MAGIC = b"CSLIMQ1\n"
FORMAT = "convslim-compressed/1"
CODINGS = ("packed", "huffman")
INPUT_OPS = ("quantize_inputs", "xnor_inputs")
MAX_CODES = 256
GRID_LAYERS = (nn.Conv2d, nn.Linear)


def _bits_for(k):
    return max(1, int(np.ceil(np.log2(max(k, 2)))))


def pack_bits(codes, bits):
    """Fixed-width codes, most significant bit first."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    planes = (codes[:, None] >> np.arange(bits - 1, -1, -1)[None, :]) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1)).tobytes()


def unpack_bits(data, bits, count):
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:count * bits].reshape(count, bits)
    return (planes.astype(np.int64) << np.arange(bits - 1, -1, -1)[None, :]).sum(1)


class _Blobs:
    def __init__(self):
        self.parts, self.offset = [], 0

    def add(self, data):
        entry = {"offset": self.offset, "nbytes": len(data)}
        self.parts.append(data)
        self.offset += len(data)
        return entry


def _raw(blobs, t):
    t = t.detach().cpu().contiguous()
    return {"kind": "raw", "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
            **blobs.add(t.numpy().tobytes())}


# --- what a layer does to its input: recorded as edits, replayed on decode -----------------------

def _device(mod):
    for t in mod.parameters():
        return t.device
    return torch.device("cpu")


def input_edits(model, after):
    """Edits that rebuild the model's input transforms: calibrated activation quantizers (grouped
    by their settings) first, then XNOR input binarisation; all placed after `after` removals."""
    groups, xnor = {}, []
    for name, mod in model.named_modules():
        hooks = list(mod._forward_pre_hooks.values())
        aq = mod._modules.get("act_quant")
        if isinstance(aq, ActQuant) and any(h is _quantize_input for h in hooks):
            key = json.dumps({"spec": aq.spec.describe(), "method": aq.method, "percentile": float(aq.percentile),
                              "momentum": float(aq.momentum)}, sort_keys=True)
            groups.setdefault(key, []).append(name)
        if any(h is _xnor_pre for h in hooks):
            xnor.append(name)
    edits = [{"op": "quantize_inputs", **json.loads(key), "layers": names, "after": after}
             for key, names in groups.items()]
    if xnor:
        edits.append({"op": "xnor_inputs", "layers": xnor, "after": after})
    return edits


def sync_input_edits(model):
    """Bring the record's input-transform edits in line with the model as it is now (they may
    have been added, e.g. by XNOR, or removed, e.g. by `fakequant.strip`); returns the record."""
    model = getattr(model, "module", model)
    rec = record_of(model)
    rec.edits = [e for e in rec.edits if e.get("op") not in INPUT_OPS] + input_edits(model, len(rec.history))
    return rec


def _layer(model, name, op):
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ConvslimError(f"the recorded edit {op!r} names a layer the model does not have: {name!r}") from None


def _replay_quantize_inputs(model, edit):
    spec = QuantSpec(**edit["spec"])
    for name in edit["layers"]:
        mod = _layer(model, name, "quantize_inputs")
        aq = ActQuant(spec, edit.get("method", "minmax"), edit.get("percentile", 99.99), edit.get("momentum", 0.01))
        aq.mode = "quant"                     # lo and hi come with the weights
        mod.act_quant = aq.to(_device(mod))
        mod.register_forward_pre_hook(_quantize_input)


def _replay_xnor_inputs(model, edit):
    binarize_inputs([(name, _layer(model, name, "xnor_inputs")) for name in edit["layers"]])


EDIT_REPLAYERS["quantize_inputs"] = _replay_quantize_inputs
EDIT_REPLAYERS["xnor_inputs"] = _replay_xnor_inputs
BEFORE_SAVE.append(sync_input_edits)   # input transforms become edits before any save


# --- encoding --------------------------------------------------------------------------------------

def grid_codes(weight):
    """Lossless (codes, codebook) for a float32 weight that takes few values: one codebook for the
    layer or one row per output channel, whichever is smaller; None when coding would not save bytes
    (ordinary float weights) or a channel has more than 256 values."""
    w = weight.detach().cpu()
    if w.dtype != torch.float32 or w.ndim < 2 or w.numel() == 0 or not bool(torch.isfinite(w).all()):
        return None
    n, rows = w.numel(), w.reshape(w.shape[0], -1)
    s = rows.sort(1).values
    new = torch.ones_like(s, dtype=torch.bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    k_channel = int(new.sum(1).max())
    options = []
    if k_channel <= MAX_CODES:
        options.append((rows.shape[0] * k_channel * 4 + (n * _bits_for(k_channel) + 7) // 8, "channel"))
        values = torch.unique(s)
        if len(values) <= MAX_CODES:
            options.append((len(values) * 4 + (n * _bits_for(len(values)) + 7) // 8, "layer"))
    if not options or min(options)[0] >= n * 4:
        return None
    if min(options)[1] == "layer":
        return torch.searchsorted(values, w.reshape(-1)).reshape(w.shape), values.reshape(1, -1).clone()
    rank = new.to(torch.int64).cumsum(1) - 1
    codebook = s[:, -1:].expand(-1, k_channel).clone()          # padding repeats the largest value
    codebook.scatter_(1, rank, s)
    return torch.searchsorted(codebook, rows.contiguous()).reshape(w.shape), codebook


def _plain_state(model):
    """State dict keys as the plain model has them (parametrized weights under their own name)."""
    out = {}
    for key, value in model.state_dict().items():
        if ".parametrizations.weight.original" in key:
            out[key.replace(".parametrizations.weight.original", ".weight")] = value
        elif ".parametrizations.weight." in key:
            continue
        else:
            out[key] = value
    return out


def coded_state(model):
    """The state dict a coded file restores, and {layer: (codes, codebook)}: weights with a
    quantizer baked as codebook[codes], plain conv/linear weights on a few values coded losslessly."""
    model = getattr(model, "module", model)
    coded = encode(model)
    state = {}
    for key, value in _plain_state(model).items():
        layer = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and layer not in coded and isinstance(model.get_submodule(layer), GRID_LAYERS):
            grid = grid_codes(value)
            if grid is not None:
                coded[layer] = grid
        if key.endswith(".weight") and layer in coded:
            codes, codebook = coded[layer]
            value = lookup(codes, codebook).reshape(value.shape)
        state[key] = value.detach().cpu()
    return state, coded


def _encode(model, coding):
    """(header, payload, state): the file's header and blobs, and the state dict they decode to."""
    if coding not in CODINGS:
        raise ConvslimError(f"unknown coding {coding!r}; choose {' or '.join(CODINGS)}")
    model = getattr(model, "module", model)
    state, coded = coded_state(model)
    if not coded:
        raise ConvslimError("the model has no quantized or clustered layer to store as codes")
    blobs, entries = _Blobs(), {}
    for key, value in state.items():
        layer = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and layer in coded:
            codes, codebook = coded[layer]
            k = codebook.shape[1]
            symbols = codes.reshape(-1).cpu().numpy()
            entry = {"kind": "coded", "shape": list(value.shape), "dtype": "float32", "count": int(symbols.size),
                     "codebook": _raw(blobs, codebook.float()), "coding": coding}
            bits = _bits_for(k)
            packed = pack_bits(symbols, bits)
            if coding == "huffman":
                lengths = huffman.code_lengths(np.bincount(symbols, minlength=k))
                data, nbits = huffman.encode(symbols, lengths)
                if len(data) + len(lengths) < len(packed):     # the code-length table costs K bytes
                    entry.update(lengths=lengths.tolist(), nbits=nbits, **blobs.add(data))
                    entries[key] = entry
                    continue
                entry["coding"] = "packed"                     # e.g. 2 symbols: Huffman cannot beat 1 bit
            entry.update(bits=bits, **blobs.add(packed))
            entries[key] = entry
        else:
            entries[key] = _raw(blobs, value)
    rec = sync_input_edits(model)
    header = {"format": FORMAT, "record": copy.deepcopy(rec.to_dict()), "tensors": entries}
    return header, b"".join(blobs.parts), state


def serialize(model, *, coding="huffman"):
    """Header dict and payload bytes for a model whose layers carry weight quantizers."""
    header, payload, _ = _encode(model, coding)
    return header, payload


def _frame(header, payload):
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<Q", len(head)) + head + payload


# --- decoding --------------------------------------------------------------------------------------

def _parse(raw, source):
    """(header, state dict) from a file's bytes, each way of being wrong reported in one line."""
    if raw[:8] != MAGIC or len(raw) < 16:
        raise ConvslimError(f"{source} is not a convslim compressed model")
    (n,) = struct.unpack("<Q", raw[8:16])
    try:
        header = json.loads(raw[16:16 + n])
    except ValueError as exc:
        raise ConvslimError(f"{source} has a damaged header") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        fmt = header.get("format") if isinstance(header, dict) else None
        raise ConvslimError(f"{source} is in an unknown format {fmt!r}")
    payload = memoryview(raw)[16 + n:]

    def blob(e):
        if e["offset"] + e["nbytes"] > len(payload):
            raise ConvslimError(f"{source} is truncated")
        return bytes(payload[e["offset"]:e["offset"] + e["nbytes"]])

    def raw_tensor(e):
        dtype = getattr(torch, e["dtype"])
        arr = np.frombuffer(blob(e), dtype=torch.empty(0, dtype=dtype).numpy().dtype)
        return torch.from_numpy(arr.copy()).reshape(e["shape"])

    state = {}
    try:
        for key, e in header["tensors"].items():
            if e["kind"] == "raw":
                state[key] = raw_tensor(e)
                continue
            codebook = raw_tensor(e["codebook"])
            if e["coding"] == "huffman":
                codes = huffman.decode(blob(e), e["nbits"], e["count"], e["lengths"])
            else:
                codes = unpack_bits(blob(e), e["bits"], e["count"])
            codes = torch.from_numpy(codes).reshape(e["shape"])
            state[key] = lookup(codes, codebook).reshape(e["shape"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise ConvslimError(f"{source} is damaged ({type(exc).__name__} while decoding its tensors)") from exc
    return header, state


def read_compressed(path):
    """(header, state dict) of a compressed file, each way of being wrong reported in one line."""
    path = Path(path)
    if not path.is_file():
        raise ConvslimError(f"file not found: {path}")
    return _parse(path.read_bytes(), path)


def _model_from(header, state, source, *, model=None, trust_code=False):
    from ..checkpoint import rebuild

    payload = {**header["record"], "state_dict": state}
    return rebuild(payload, source, model=model, trust_code=trust_code)


def load_compressed(path, *, model=None, trust_code=False):
    """Rebuild the model from a compressed file: architecture, channel removals and structural
    edits replayed in the order made, input transforms, decoded weights. A model made from your
    own code needs that code: a freshly built base `model`, or `trust_code=True` (as `convslim.load`)."""
    header, state = read_compressed(path)
    return _model_from(header, state, path, model=model, trust_code=trust_code)


def _base_model(record):
    """A fresh base model for the record's architecture, or None where this process cannot build
    it (a class defined in a notebook, say). Only for checking and reporting what this process
    itself made, never for a file read from disk."""
    from ..modelspec import build_model

    arch = record["arch"]
    try:
        return build_model(arch["model"], num_classes=arch["num_classes"], in_channels=arch["in_channels"],
                           width=arch["width"], input_shape=record["input_shape"], output=arch.get("output"),
                           check=False)
    except Exception:
        return None


def decode_model(model, *, like=None, coding="packed"):
    """The model a coded file of `model` restores, decoded from the encoded bytes in memory (what
    `save_compressed` then `load_compressed` give), for reporting the accuracy the file keeps.

    `like` is the unquantized model `model` was made from: where the architecture cannot be built
    again here, a copy of it (input transforms replaced by the recorded ones) takes the weights.
    """
    from ..checkpoint import load_state, rebuild

    source = "the coded model"
    header, payload, _ = _encode(model, coding)
    header, state = _parse(_frame(header, payload), source)
    record = header["record"]
    base = _base_model(record)
    if base is not None:
        return rebuild({**record, "state_dict": state}, source, model=base)
    if like is None:
        raise ConvslimError(f"cannot build {record['arch']['model']!r} again to decode the coded model")
    plain = without_input_quantizers(copy.deepcopy(getattr(like, "module", like)).cpu())
    for edit in record["edits"]:
        if edit["op"] in INPUT_OPS:
            EDIT_REPLAYERS[edit["op"]](plain, edit)
    load_state(plain, state, source)
    rec = record_of(plain)
    rec.history, rec.edits, rec.meta = copy.deepcopy(record["history"]), copy.deepcopy(record["edits"]), \
        copy.deepcopy(record["meta"])
    return plain.eval()


def _verify(tmp, header, state, out):
    """Read the written file back: same header, every tensor as encoded, and a model that rebuilds
    from it (replayed removals and edits, strict loading) where this process can build the base."""
    def fail(what):
        raise ConvslimError(f"{out} was not written: reading it back {what}")

    try:
        back_header, back_state = _parse(Path(tmp).read_bytes(), out)
    except ConvslimError as exc:
        fail(f"failed: {exc}")
    if back_header != json.loads(json.dumps(header)):
        fail("gave a different header")
    if set(back_state) != set(state):
        fail("gave other tensors")
    for key, value in state.items():
        got = back_state[key]
        if got.dtype != value.dtype or got.shape != value.shape or not (
                torch.equal(got, value) or bool(((got == value) | (got.isnan() & value.isnan())).all())):
            fail(f"gave a different {key}")
    base = _base_model(back_header["record"])
    if base is not None:
        try:
            _model_from(back_header, back_state, out, model=base)
        except ConvslimError as exc:
            fail(f"does not give the model: {exc}")


def save_compressed(model, path, *, coding="huffman", inputs=()):
    """Write the coded model atomically, read back and checked first; returns the bytes written."""
    out = check_output_path(path, inputs=inputs)
    header, payload, state = _encode(model, coding)
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(_frame(header, payload))
        _verify(tmp, header, state, out)
    return out.stat().st_size


def coded_sizes(model):
    """Bytes of the file with packed codes and with Huffman-coded codes (header included)."""
    return {coding: len(_frame(*serialize(model, coding=coding))) for coding in CODINGS}
