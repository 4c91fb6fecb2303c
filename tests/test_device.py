"""Device placement: a function given a model on a device works there and leaves its results there.

On a CPU-only machine these run once, on the CPU; where CUDA is present the `device` fixture runs
each again on the GPU, where a tensor made on the wrong device fails at once. Comparisons with a
CPU copy are made with TF32 off, so they hold to float32 rounding.
"""
import copy

import pytest
import torch

import convslim
from conftest import on
from convslim.checkpoint import example_input
from convslim.cli import main
from convslim.convert import compare_layers, convert
from convslim.decomposition import LowRank, decompose
from convslim.device import device_of
from convslim.distill import DistillConfig, Distiller
from convslim.metrics import count, latency, profile, state_dict_bytes
from convslim.pruning.criteria import PermutationOptions
from convslim.quantization.fakequant import (UniformWeight, calibrate, encode, layers_of, quantize_inputs,
                                             quantize_weights, strip)
from convslim.quantization.quantizers import QuantSpec, weight_spec
from convslim.sparsity import SparsifyConfig, sparsify
from convslim.train import evaluate, recalibrate_bn


@pytest.fixture(autouse=True)
def _exact_float32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def small(name="digits_resnet", device="cpu"):
    return convslim.build_model(name, num_classes=10, in_channels=1, input_shape=[1, 8, 8]).to(device).eval()


def test_example_input_counts_and_profile_follow_the_model(device):
    model = small(device=device)
    assert device_of(model).type == device and example_input(model, 3).device.type == device
    cpu = copy.deepcopy(model).cpu()
    assert count(model, example_input(model)) == count(cpu, example_input(cpu))
    assert count(model, torch.zeros(1, 1, 8, 8)) == count(cpu, example_input(cpu))   # a CPU example is moved
    assert state_dict_bytes(model) == state_dict_bytes(cpu)          # what a saved (CPU) file costs
    prof = profile(model, [1, 8, 8], latency_batches=())
    assert prof["totals"]["flops"] == count(cpu, example_input(cpu))["flops"] and on(model, device)
    assert "torch_b1_ms" in latency(model, [1, 8, 8], batches=(1,), warmup=0, repeats=1, onnx=False)
    assert on(model, device)                                          # timed as a CPU copy


def test_export_checks_a_model_on_any_device_and_leaves_it_there(tmp_path, device):
    model = small(device=device)
    assert convslim.export_onnx(model, tmp_path / "m.onnx", [1, 8, 8]) < 1e-4
    assert on(model, device)


def test_evaluate_and_bn_recalibration_honour_the_device(digits, device):
    model, cpu = small("digitsnet", device="cpu"), small("digitsnet", device="cpu")
    cpu.load_state_dict(model.state_dict())
    got = evaluate(model, digits, "val", device=device)
    assert on(model, device)
    want = evaluate(cpu, digits, "val", device="cpu")
    assert got["images"] == want["images"] and got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    recalibrate_bn(model, digits, batches=2, batch_size=32, device=device)
    assert on(model, device) and not model.training


@pytest.mark.parametrize("options", [PermutationOptions(), PermutationOptions(estimator="sample", samples=2),
                                     PermutationOptions(perm="reinit", estimator="sample", input="random"),
                                     PermutationOptions(measure="bn")], ids=["expected", "sample", "random", "bn"])
def test_importance_on_the_device_matches_the_cpu_and_pruning_stays_there(digits, tmp_path, device, options):
    model = small(device=device)
    imp = convslim.channel_importance(model, digits, calib_batches=1, batch_size=32, options=options)
    ref = convslim.channel_importance(copy.deepcopy(model).cpu(), digits, calib_batches=1, batch_size=32,
                                      options=options)
    for name, d in imp.layer_scores.items():
        assert d.device.type == "cpu"                                 # scores are small CPU vectors
        want = ref.layer_scores[name]
        torch.testing.assert_close(d, want, rtol=1e-2, atol=1e-4 * float(want.max()))
    slim, kept = convslim.apply_rule(model, imp, "cr", 0.7)
    assert on(model, device) and on(slim, device)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 1, 8, 8, device=device)
    again = convslim.load(convslim.save(slim, tmp_path / "slim.pt"))
    torch.testing.assert_close(again(x.cpu()), slim(x).cpu(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["svd", "tucker", "cp"])
def test_decomposition_stays_on_the_device(device, method):
    model = small(device=device)
    slim, rows = decompose(model, method, 0.6)
    assert any(r["apply"] for r in rows) and on(slim, device) and on(model, device)
    assert any(isinstance(m, LowRank) for m in slim.modules())
    ref, ref_rows = decompose(copy.deepcopy(model).cpu(), method, 0.6)
    assert [r["ranks"] for r in rows] == [r["ranks"] for r in ref_rows]
    x = torch.randn(2, 1, 8, 8, device=device)
    torch.testing.assert_close(slim(x).cpu(), ref(x.cpu()), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("to", ["separable", "ghost"])
def test_compact_conversion_stays_on_the_device(device, to):
    model = small(device=device)
    rows = compare_layers(model)
    assert rows and on(model, device)
    conv, _ = convert(model, to)
    assert on(conv, device) and conv(torch.randn(2, 1, 8, 8, device=device)).shape == (2, 10)


def test_distiller_puts_teacher_and_adapters_with_the_student(digits, device):
    student, teacher = small("digitsnet", device=device), small("digits_resnet", device="cpu")
    d = Distiller(student, teacher, DistillConfig(losses=("kd", "hint", "attention")), [1, 8, 8])
    try:
        assert on(teacher, device) and on(d, device)                 # adapters included
        x, y = next(iter(digits.loader("train", 16, device=device)))
        loss = d.loss(d(x), x, y)
        assert loss.device.type == device and torch.isfinite(loss)
    finally:
        d.close()


def test_sparsify_without_data_stays_on_the_device(device):
    model = small(device=device)
    sparse, masks, summary = sparsify(model, None, SparsifyConfig(sparsity=0.8, device=device), progress=False)
    assert on(sparse, device) and summary["sparsity"] == pytest.approx(0.8, abs=1e-3)


def test_fake_quantization_calibrates_and_encodes_on_the_device(digits, device):
    sim = small("digitsnet", device=device)
    layers = layers_of(sim)
    quantize_weights(sim, layers, lambda n, m: UniformWeight(weight_spec(4)))
    quantize_inputs(sim, layers, QuantSpec(8, symmetric=False), method="percentile")
    calibrate(sim, digits.calibration(32))                            # CPU images, model on the device
    assert on(sim, device)
    x = torch.randn(2, 1, 8, 8, device=device)
    assert sim(x).shape == (2, 10)
    codes, codebook = next(iter(encode(sim).values()))
    assert codes.device.type == device and codebook.device.type == device
    plain = strip(sim)
    assert on(plain, device) and plain(x).shape == (2, 10)


def test_deterministic_switches_cudnn_to_repeatable_kernels(monkeypatch):
    """What `pick_device` turns on for CUDA (so the same seed gives the same weights there), and off."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        convslim.deterministic()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        import os
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        convslim.deterministic(False)
        assert not torch.backends.cudnn.deterministic
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def test_a_device_the_user_names_is_kept_on_a_machine_with_a_gpu(digits, tmp_path, monkeypatch):
    """On a GPU machine `device="cpu"` must hold for every step of a search: its probes, scores and
    BatchNorm passes. The machine is pretended to have CUDA, so any step that picks "auto" instead
    fails here (a CPU build cannot reach CUDA), as it did on a lent H200 before the fix."""
    from convslim.decomposition import auto_decompose

    torch.manual_seed(0)
    model = convslim.build_model("digitsnet", num_classes=10, in_channels=1, input_shape=[1, 8, 8])
    convslim.fit(model, digits, convslim.TrainConfig(epochs=1, batch_size=64, progress=False, device="cpu"),
                 validate=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = convslim.SearchConfig(max_acc_loss=50.0, min_interval=0.25, probe_epochs=0.2, final_epochs=0.2,
                                batch_size=64, device="cpu", search="thesis")
    for search in (lambda: convslim.auto_prune(model, digits, cfg, progress=False, echo=lambda *a: None),
                   lambda: auto_decompose(model, digits, "svd", cfg, progress=False, echo=lambda *a: None)):
        best, summary = search()
        assert on(best, "cpu") and on(model, "cpu") and summary["flops"] < summary["base_flops"]
    task = convslim.Task.from_splits(digits, device="cpu")
    assert 0 <= task.evaluate(model) <= 100 and on(model, "cpu")
    convslim.save(model, tmp_path / "m.pt")
    for cmd in (["prune", "--cr", "0.9", "--finetune-epochs", "0.1"], ["decompose", "--energy", "0.9", "--epochs", "0.1"]):
        assert main([*cmd, "--model", str(tmp_path / "m.pt"), "--data", "digits", "--device", "cpu",
                     "--out", str(tmp_path / f"{cmd[0]}.pt")]) == 0
