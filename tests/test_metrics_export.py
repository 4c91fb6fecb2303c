"""Counts match hand arithmetic; latency is measured; ONNX export agrees with PyTorch."""
import onnx
import pytest
import torch
from torch import nn

import convslim
from convslim.errors import ConvslimError
from convslim.metrics import layer_table


def tiny():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def test_counts_follow_the_documented_formulas():
    rows = {r["layer"]: r for r in layer_table(tiny(), torch.randn(1, 1, 8, 8))}
    assert rows["0"]["macs"] == 8 * 8 * 4 * 9
    assert rows["0"]["flops"] == 2 * 8 * 8 * (9 + 1) * 4
    assert rows["5"]["macs"] == 40 and rows["5"]["flops"] == (2 * 4 - 1) * 10
    assert rows["1"]["params"] == 8 and rows["1"]["macs"] == 0
    totals = convslim.count(tiny(), torch.randn(1, 1, 8, 8))
    assert totals["params"] == 4 * 9 + 4 + 8 + 50
    assert totals["macs"] == 2304 + 40


def test_depthwise_macs_divide_by_groups():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    (row,) = layer_table(conv, torch.randn(1, 8, 8, 8))
    assert row["macs"] == 8 * 8 * 8 * 9


def test_profile_measures_size_and_latency():
    model = convslim.build_model("digitsnet", in_channels=1, input_shape=[1, 8, 8])
    prof = convslim.profile(model, [1, 8, 8], latency_batches=(1, 4), repeats=3)
    assert prof["totals"]["bytes"] > 4 * prof["totals"]["params"] * 0.9
    for key in ("torch_b1_ms", "ort_b1_ms", "torch_b4_ms", "ort_b4_ms"):
        assert prof["latency"][key] > 0
    before = torch.get_num_threads()
    timed = convslim.profile(model, [1, 8, 8], latency_batches=(1,), repeats=2, threads=2)["latency"]
    assert timed["threads"] == 2 and torch.get_num_threads() == before    # timed at 2 threads, setting restored


def test_export_writes_checked_onnx_with_dynamic_batch(tmp_path):
    model = convslim.build_model("digits_resnet", in_channels=1, input_shape=[1, 8, 8])
    diff = convslim.export_onnx(model, tmp_path / "m.onnx", [1, 8, 8])
    assert diff < 1e-4
    graph = onnx.load(tmp_path / "m.onnx").graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_export_failure_leaves_no_file(tmp_path):
    class Unexportable(nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy().copy())
    with pytest.raises(ConvslimError):
        convslim.export_onnx(Unexportable(), tmp_path / "bad.onnx", [1, 8, 8])
    assert list(tmp_path.iterdir()) == []
