"""The examples a user copies from: each runs on tiny data, and what it promises holds."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def _same_outputs(a, b, shape):
    x = torch.randn(4, *shape)
    return torch.allclose(a(x), b(x), atol=1e-5)


def test_own_model_loader_loop_and_metric_through_auto_prune(tmp_path, monkeypatch):
    import own_loop_auto_prune as example

    monkeypatch.chdir(tmp_path)
    model, slim, again, summary = example.main(epochs=3, final_epochs=1, max_loss=10.0)
    assert summary["pruned"] and summary["flops"] < summary["base_flops"]
    kept = [p for p in summary["log"] if p["decision"] == "keep"]
    assert all(p["val_acc"] >= summary["base_val_acc"] - 10.0 for p in kept)   # judged by the user's metric
    assert _same_outputs(slim, again, (1, 8, 8))                           # saved, rebuilt by the user's code
    assert (tmp_path / "two_branch_slim.onnx").stat().st_size > 0


def test_segmentation_head_is_kept_and_miou_judges(tmp_path, monkeypatch):
    import segmentation_miou as example

    monkeypatch.chdir(tmp_path)
    model, slim, again, summary = example.main(epochs=4, final_epochs=1, max_loss=20.0)
    assert slim.head.out_channels == example.CLASSES                       # a conv head is an output layer
    assert summary["pruned"] and summary["flops"] < summary["base_flops"]
    assert _same_outputs(slim, again, (1, 16, 16))
    assert (tmp_path / "segnet_slim.onnx").stat().st_size > 0


def test_own_data_and_metric_through_ptq(tmp_path, monkeypatch):
    import own_data_ptq as example

    monkeypatch.chdir(tmp_path)
    res = example.main(epochs=3)
    assert (tmp_path / "two_branch_int8.onnx").exists() and res["size_ratio"] > 2
    assert res["float_top1"] > 50 and abs(res["top1"] - res["float_top1"]) <= 3.0    # the user's top-1, real int8


def test_own_loop_trains_qat(tmp_path):
    """QAT with the user's loop: their finetune(model, epochs) trains the fake-quant model."""
    import own_loop_auto_prune as own
    import convslim.quantization as q

    torch.manual_seed(0)
    train_loader, val_loader = own.loaders()
    model = own.TwoBranchNet()
    own.train(model, train_loader, 2)
    calls = []

    def finetune(m, epochs):
        calls.append(epochs)
        own.train(m, train_loader, epochs)

    res = q.qat(model, train_loader, tmp_path / "q.onnx", finetune=finetune, epochs=0.5, calib_images=128,
                evaluate=lambda m: own.top1(m, val_loader), latency_batches=())
    assert calls == [0.5] and (tmp_path / "q.onnx").exists()
    assert abs(res["top1"] - res["sim_top1"]) <= 3.0      # the exported int8 file keeps what QAT learned


def test_own_loader_through_sparsify_distill_and_convslims_trainer(tmp_path):
    """sparsify with the user's loop and metric; distill_fit and convslim's trainer on a DataLoader."""
    import own_loop_auto_prune as own
    import convslim
    from convslim.distill import DistillConfig, distill_fit
    from convslim.train import TrainConfig

    torch.manual_seed(0)
    train_loader, val_loader = own.loaders()
    teacher = own.TwoBranchNet()
    finetune, _ = convslim.trainer(train_loader, lr=0.05, device="cpu", progress=False)
    finetune(teacher, 2)                                   # convslim's trainer on the user's loader
    assert own.top1(teacher, val_loader) > 40                # it learns (chance is 10%)
    sparse, masks, summary = convslim.sparsify(
        teacher, train_loader, convslim.sparsity.SparsifyConfig(sparsity=0.5, steps=2, epochs_per_step=0.5),
        evaluate=lambda m: own.top1(m, val_loader), finetune=lambda m, e: own.train(m, train_loader, e),
        progress=False)
    assert summary["sparsity"] >= 0.45 and all("val_acc" in s for s in summary["steps"])
    student = own.TwoBranchNet()
    before = own.top1(student, val_loader)
    distill_fit(student, teacher, train_loader, TrainConfig(epochs=2, lr=0.05, device="cpu", progress=False),
                DistillConfig(alpha=0.5))
    assert own.top1(student, val_loader) > before + 15


def test_own_model_through_prune_and_decomposition_search(tmp_path):
    """prune and auto_decompose with only public names: the user's loader, loop and metric; the
    results save, reload onto the user's code and export."""
    import own_loop_auto_prune as own
    import convslim

    torch.manual_seed(0)
    train_loader, val_loader = own.loaders()
    model = own.TwoBranchNet()
    own.train(model, train_loader, 2)
    slim, kept = convslim.prune(model, train_loader, cr=0.8, example_input=(1, 8, 8))
    assert convslim.count(slim, torch.randn(1, 1, 8, 8))["flops"] < convslim.count(model, torch.randn(1, 1, 8, 8))["flops"]
    low, summary = convslim.auto_decompose(
        model, train_loader, "svd", convslim.SearchConfig(max_acc_loss=20.0, min_interval=0.25, probe_epochs=0.2,
                                                          final_epochs=0.2),
        evaluate=lambda m: own.top1(m, val_loader), finetune=lambda m, e: own.train(m, train_loader, e),
        progress=False)
    assert summary["probes"] == 2
    for name, result in (("pruned", slim), ("low", low)):
        path = tmp_path / f"{name}.pt"
        convslim.save(result, path)
        again = convslim.load(path, model=own.TwoBranchNet())
        assert _same_outputs(result, again, (1, 8, 8))
        convslim.export_onnx(again, tmp_path / f"{name}.onnx", [1, 8, 8])
