"""Unstructured sparsity: magnitude pruning (global or per layer), an iterative prune/fine-tune
schedule with masks held during training, and CSR storage whose real size is measured.

    sparse, masks, summary = sparsify(model, splits, SparsifyConfig(sparsity=0.9, scope="global"))
    save_sparse(sparse, "m.csr.pt"); again = load_sparse("m.csr.pt")
"""
from .magnitude import apply_masks, keep_masks, magnitude_masks, sparsity_table
from .schedule import SparsifyConfig, sparsify, targets
from .storage import load_sparse, save_sparse, storage_sizes

__all__ = ["SparsifyConfig", "apply_masks", "keep_masks", "load_sparse", "magnitude_masks", "save_sparse",
           "sparsify", "sparsity_table", "storage_sizes", "targets"]
