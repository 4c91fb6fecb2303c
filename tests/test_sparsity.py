"""Unstructured sparsity: exact zero counts, masks held in training, CSR files that round-trip."""
import pytest
import torch

import convslim
from convslim.errors import ConvslimError
from convslim.sparsity import (SparsifyConfig, keep_masks, load_sparse, magnitude_masks, save_sparse, sparsify,
                               sparsity_table, storage_sizes, targets)
from convslim.sparsity.magnitude import apply_masks, prunable


def small(name="digitsnet"):
    return convslim.build_model(name, num_classes=10, in_channels=1, input_shape=[1, 8, 8]).eval()


def test_global_masks_zero_exactly_the_smallest():
    model = small()
    weights = prunable(model)
    n = sum(w.numel() for w in weights.values())
    masks = magnitude_masks(model, 0.9, "global")
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * n)
    kept = torch.cat([w.detach().abs().flatten()[m.flatten()] for w, m in zip(weights.values(), masks.values())])
    dropped = torch.cat([w.detach().abs().flatten()[~m.flatten()] for w, m in zip(weights.values(), masks.values())])
    assert dropped.max() <= kept.min()


def test_layer_scope_prunes_each_layer_to_the_share():
    model = small()
    masks = magnitude_masks(model, 0.5, "layer")
    for k, m in masks.items():
        assert int((~m).sum()) == round(0.5 * m.numel()), k


def test_masks_hold_during_training(digits):
    model = small()
    masks = magnitude_masks(model, 0.8, "global")
    with keep_masks(model, masks):
        convslim.fit(model, digits, convslim.TrainConfig(epochs=1, max_steps=4, batch_size=64, progress=False),
                     validate=False)
    params = dict(model.named_parameters())
    assert all(torch.all(params[k][~m] == 0) for k, m in masks.items())
    assert sparsity_table(model)[1] == pytest.approx(0.8, abs=1e-4)


def test_cubic_schedule_rises_to_the_target():
    t = targets(SparsifyConfig(sparsity=0.9, steps=3))
    assert t == sorted(t) and t[-1] == pytest.approx(0.9) and t[0] > 0.9 / 3     # large steps first
    assert targets(SparsifyConfig(sparsity=0.6, steps=3, schedule="linear")) == pytest.approx([0.2, 0.4, 0.6])


def test_csr_file_round_trips_exactly_and_is_smaller(tmp_path):
    model = small("digits_resnet")
    sparse, _, summary = sparsify(model, None, SparsifyConfig(sparsity=0.9), progress=False)
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-4)
    path = save_sparse(sparse, tmp_path / "m.csr")
    again = load_sparse(path)
    for (k, a), (_, b) in zip(sparse.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(again(x), sparse(x))
    sizes = storage_sizes(sparse)
    assert sizes["csr_bytes"] < 0.5 * sizes["dense_bytes"]
    assert sizes["csr_bytes"] == pytest.approx(path.stat().st_size, rel=0.02)   # zip names differ


def test_sparse_file_errors(tmp_path):
    model = small()
    convslim.save(model, tmp_path / "dense.pt")
    with pytest.raises(ConvslimError, match="not a convslim sparse"):
        load_sparse(tmp_path / "dense.pt")
    with pytest.raises(ConvslimError, match="not found"):
        load_sparse(tmp_path / "missing.csr")
    with pytest.raises(ConvslimError, match="sparsity"):
        magnitude_masks(model, 1.0)


def test_sparsify_schedule_with_fine_tuning(digits):
    model = small()
    cfg = SparsifyConfig(sparsity=0.7, steps=2, epochs_per_step=0.1, batch_size=64)
    sparse, masks, summary = sparsify(model, digits, cfg, progress=False)
    assert [round(s["sparsity"], 3) for s in summary["steps"]] == [round(t, 3) for t in targets(cfg)]
    assert all("val_acc" in s for s in summary["steps"])
    apply_masks(sparse, masks)
    assert sparsity_table(sparse)[1] == pytest.approx(0.7, abs=1e-4)
