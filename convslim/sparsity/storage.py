"""Sparse storage (seed 000: CSR/CSC): each sparse weight as CSR row pointers, column indices and
values of its 2-d view (output channel x the rest), with the smallest index types that hold them.

The file is a plain dict of tensors read with weights_only, like a checkpoint: the same record
(architecture, channel removals, structural edits) plus the weights, so `load_sparse` rebuilds
the model exactly. A weight goes to CSR only where CSR is smaller than dense.
"""
import tempfile
import warnings
from pathlib import Path

import torch

from ..checkpoint import load_safely, rebuild, record_of, save
from ..errors import ConvslimError
from ..fileio import check_output_path, torch_save_atomic

SPARSE_FORMAT = "convslim-sparse/1"


def _index_dtype(limit):
    for dt in (torch.int16, torch.int32):
        if limit <= torch.iinfo(dt).max:
            return dt
    return torch.int64


def to_csr(tensor):
    """CSR pieces of a tensor's (rows = dim 0) 2-d view: shape, crow, col, values."""
    w2 = tensor.detach().cpu().reshape(tensor.shape[0], -1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        csr = w2.to_sparse_csr()
    return {"shape": list(tensor.shape), "crow": csr.crow_indices().to(_index_dtype(csr.values().numel())),
            "col": csr.col_indices().to(_index_dtype(w2.shape[1])), "values": csr.values().clone()}


def from_csr(piece):
    shape = piece["shape"]
    rows = shape[0]
    cols = 1
    for d in shape[1:]:
        cols *= d
    try:   # invariants checked: a damaged file is an error, not a bad memory access
        dense = torch.sparse_csr_tensor(piece["crow"].long(), piece["col"].long(), piece["values"], size=(rows, cols),
                                        check_invariants=True)
    except RuntimeError as exc:
        raise ConvslimError(f"damaged CSR data for a weight of shape {tuple(shape)}: {str(exc).splitlines()[0]}") from exc
    return dense.to_dense().reshape(shape)


def _csr_bytes(piece):
    return sum(piece[k].numel() * piece[k].element_size() for k in ("crow", "col", "values"))


def save_sparse(model, path, *, inputs=(), **meta):
    """Write `model` with its sparse weights in CSR; returns the path."""
    out = check_output_path(path, inputs=inputs)
    model = getattr(model, "module", model)
    rec = record_of(model)
    rec.meta.update(meta)
    dense, csr = {}, {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if v.dim() >= 2 and v.is_floating_point():
            piece = to_csr(v)
            if _csr_bytes(piece) < v.numel() * v.element_size():
                csr[k] = piece
                continue
        dense[k] = v.clone()
    payload = {"format": SPARSE_FORMAT, "record": rec.to_dict(), "dense": dense, "csr": csr}
    torch_save_atomic(payload, out)
    return out


def load_sparse(path, *, trust_code=False):
    """Rebuild a model saved by `save_sparse` (dense weights, in eval mode); see `convslim.load`
    for `trust_code`."""
    path = Path(path)
    payload = load_safely(path, "sparse model")
    if not isinstance(payload, dict) or payload.get("format") != SPARSE_FORMAT:
        raise ConvslimError(f"{path} is not a convslim sparse model file")
    state = dict(payload["dense"])
    state.update({k: from_csr(p) for k, p in payload["csr"].items()})
    return rebuild({**payload["record"], "state_dict": state}, path, trust_code=trust_code)


def storage_sizes(model):
    """Bytes on disk of the same model as a dense checkpoint and as the CSR file (both written)."""
    with tempfile.TemporaryDirectory() as tmp:
        dense = Path(save(model, Path(tmp) / "dense.pt"))
        sparse = Path(save_sparse(model, Path(tmp) / "sparse.pt"))
        return {"dense_bytes": dense.stat().st_size, "csr_bytes": sparse.stat().st_size}
