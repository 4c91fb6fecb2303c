"""Unstructured magnitude pruning (seed 000 section 1, seed 002 section 1.1): zero the weights of
smallest |w|, across the whole model (global) or within each layer, and keep them zero while
the model trains.

Masks are boolean tensors keyed by parameter name. During training a gradient hook multiplies
each pruned weight's gradient by 0; with the weight itself 0, SGD's weight decay and momentum
leave it 0 too, so the mask holds without touching the training loop.
"""
import contextlib

import torch
from torch import nn

from ..errors import ConvslimError

SCOPES = ("global", "layer")


def prunable(model, exclude=()):
    """The weights magnitude pruning applies to: every conv and linear weight, by parameter name."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and name not in exclude:
            out[f"{name}.weight" if name else "weight"] = mod.weight
    if not out:
        raise ConvslimError("the model has no conv or linear weights to sparsify")
    return out


def _keep_largest(values, keep):
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    if keep > 0:
        mask[values.flatten().topk(keep, sorted=False).indices] = True
    return mask


@torch.no_grad()
def magnitude_masks(model, sparsity, scope="global", *, exclude=()):
    """Masks (True = kept) zeroing a `sparsity` share of the weights, smallest |w| first."""
    if not 0 <= sparsity < 1:
        raise ConvslimError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in SCOPES:
        raise ConvslimError(f"unknown scope {scope!r}; choose global or layer")
    weights = prunable(model, exclude)
    if scope == "layer":
        return {k: _keep_largest(w.detach().abs().cpu(), w.numel() - round(sparsity * w.numel())).view_as(w)
                for k, w in weights.items()}
    flat = torch.cat([w.detach().abs().cpu().flatten() for w in weights.values()])
    keep = _keep_largest(flat, flat.numel() - round(sparsity * flat.numel()))
    masks, start = {}, 0
    for k, w in weights.items():
        masks[k] = keep[start:start + w.numel()].view(w.shape)
        start += w.numel()
    return masks


@torch.no_grad()
def apply_masks(model, masks):
    params = dict(model.named_parameters())
    for k, m in masks.items():
        params[k].mul_(m.to(params[k].device, params[k].dtype))
    return model


@contextlib.contextmanager
def keep_masks(model, masks):
    """Within the block pruned weights get zero gradients; on exit the masks are re-applied."""
    params = dict(model.named_parameters())
    apply_masks(model, masks)
    handles = []
    for k, m in masks.items():
        mask = m.to(params[k].device, params[k].dtype)
        handles.append(params[k].register_hook(lambda g, mask=mask: g * mask.to(g.device)))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        apply_masks(model, masks)


def sparsity_table(model, exclude=()):
    """Zeros per prunable weight and overall: rows (name, numel, zeros, share) and the total share."""
    rows = [{"weight": k, "numel": w.numel(), "zeros": int((w == 0).sum()), "sparsity": float((w == 0).float().mean())}
            for k, w in prunable(model, exclude).items()]
    total = sum(r["numel"] for r in rows)
    return rows, sum(r["zeros"] for r in rows) / max(total, 1)
