"""The compressed model file: codebooks plus coded indices, decoded back to the identical model.

Layout: an 8-byte magic, an 8-byte header length, a JSON header, then the binary blobs.
The header holds the model's convslim record (architecture, input shape, channel removals,
metadata) and one entry per state-dict tensor:
- quantized weights: a codebook (one row per output channel, or one row per layer) and one code
  per weight, stored either packed at ceil(log2 K) bits each or Huffman-coded (code lengths in
  the header, canonical codes, so the table costs K bytes); with `coding="huffman"` a layer whose
  Huffman stream would not be smaller than fixed width (two symbols, say) stays packed;
- everything else (biases, BatchNorm, unquantized layers): raw bytes in the tensor's dtype.
Nothing is pickled, so opening a file runs no code. The decoded weights are codebook[codes],
bit for bit what `fakequant.strip` bakes into the model.
"""
import json
import struct
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import record_of
from ..errors import ConvslimError
from ..fileio import atomic_path, check_output_path
from . import huffman
from .fakequant import encode, lookup

MAGIC = b"CSLIMQ1\n"
FORMAT = "convslim-compressed/1"
CODINGS = ("packed", "huffman")


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


def coded_state(model):
    """The state dict a coded file restores: quantized weights baked as codebook[codes]."""
    coded = encode(model)
    state = {}
    for key, value in _plain_state(model).items():
        layer = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and layer in coded:
            codes, codebook = coded[layer]
            value = lookup(codes, codebook).reshape(value.shape)
        state[key] = value
    return state, coded


def _plain_state(model):
    """State dict keys as the plain model has them (parametrized weights under their own name)."""
    out = {}
    for key, value in model.state_dict().items():
        if ".parametrizations.weight.original" in key:
            out[key.replace(".parametrizations.weight.original", ".weight")] = value
        elif ".parametrizations.weight." in key or ".act_quant." in key:
            continue
        else:
            out[key] = value
    return out


def serialize(model, *, coding="huffman"):
    """Header dict and payload bytes for a model whose layers carry weight quantizers."""
    if coding not in CODINGS:
        raise ConvslimError(f"unknown coding {coding!r}; choose {' or '.join(CODINGS)}")
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
    rec = record_of(model)
    header = {"format": FORMAT, "record": rec.to_dict(), "tensors": entries}
    return header, b"".join(blobs.parts)


def save_compressed(model, path, *, coding="huffman", inputs=()):
    """Write the coded model atomically; returns the number of bytes written."""
    out = check_output_path(path, inputs=inputs)
    header, payload = serialize(model, coding=coding)
    head = json.dumps(header, separators=(",", ":")).encode()
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + head + payload)
    return out.stat().st_size


def read_compressed(path):
    """(header, state dict) of a compressed file, each way of being wrong reported in one line."""
    path = Path(path)
    if not path.is_file():
        raise ConvslimError(f"file not found: {path}")
    raw = path.read_bytes()
    if raw[:8] != MAGIC or len(raw) < 16:
        raise ConvslimError(f"{path} is not a convslim compressed model")
    (n,) = struct.unpack("<Q", raw[8:16])
    try:
        header = json.loads(raw[16:16 + n])
    except ValueError as exc:
        raise ConvslimError(f"{path} has a damaged header") from exc
    if header.get("format") != FORMAT:
        raise ConvslimError(f"{path} is in an unknown format {header.get('format')!r}")
    payload = memoryview(raw)[16 + n:]

    def blob(e):
        if e["offset"] + e["nbytes"] > len(payload):
            raise ConvslimError(f"{path} is truncated")
        return bytes(payload[e["offset"]:e["offset"] + e["nbytes"]])

    def raw_tensor(e):
        dtype = getattr(torch, e["dtype"])
        arr = np.frombuffer(blob(e), dtype=torch.empty(0, dtype=dtype).numpy().dtype)
        return torch.from_numpy(arr.copy()).reshape(e["shape"])

    state = {}
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
    return header, state


def load_compressed(path):
    """Rebuild the model from a compressed file: architecture, channel removals, decoded weights."""
    from ..checkpoint import load_state
    from ..modelspec import build_model
    from ..pruning.surgery import replay_history

    header, state = read_compressed(path)
    rec = header["record"]
    arch = rec["arch"]
    model = build_model(arch["model"], num_classes=arch["num_classes"], in_channels=arch["in_channels"],
                        width=arch["width"], input_shape=rec["input_shape"])
    replay_history(model, rec["history"], torch.randn(1, *rec["input_shape"]))
    load_state(model, state, path)
    r = record_of(model)
    r.history = [list(h) for h in rec["history"]]
    r.meta = dict(rec.get("meta", {}))
    return model.eval()


def coded_sizes(model):
    """Bytes of the file with packed codes and with Huffman-coded codes (header included)."""
    out = {}
    for coding in CODINGS:
        header, payload = serialize(model, coding=coding)
        out[coding] = 16 + len(json.dumps(header, separators=(",", ":")).encode()) + len(payload)
    return out
