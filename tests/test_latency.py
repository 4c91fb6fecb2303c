"""The latency model: sweeps, lookup, caching, snapping, and the latency target on digits."""
import copy
import json

import pytest
import torch

import convslim
from convslim.checkpoint import example_input
from convslim.cli import main
from convslim.latency import ConvLayer, ConvShape, LatencyTable, _at, _onnx_block, conv_layers, sweep_counts
from convslim.pruning.latency_aware import LatencySnap

from test_pruning import trained_model


SHAPE = ConvShape((3, 3), (1, 1), (1, 1), (1, 1), False, 8, 8)


class BlockTable(LatencyTable):
    """A table whose 'measurements' follow a known rule: inputs not a multiple of 4 cost double,
    outputs cost by blocks of 8, so snapping has one right answer."""

    def __init__(self, tmp_path):
        super().__init__(cache_dir=tmp_path)

    def block_ms(self, shape, c_in, c_out, chain=1):
        cost = (c_in * (1 if c_in % 4 == 0 else 2)) * (8 * -(-c_out // 8))
        return float(cost * chain)

    def boundary_ms(self, shape, c):
        return 0.0


def test_sweep_counts_cover_small_layers_and_step_through_wide_ones():
    assert sweep_counts(12) == list(range(1, 13))
    wide = sweep_counts(256)
    assert wide[0] == 8 and wide[-1] == 256 and all(c % 8 == 0 for c in wide) and len(wide) == 32
    assert sweep_counts(100)[-1] == 100                   # the full width is always measured
    assert _at({8: 1.0, 16: 2.0, 24: 3.0}, 9) == 2.0       # between measured counts: the next one up
    assert _at({8: 1.0, 16: 2.0}, 16) == 2.0


def test_snapping_moves_counts_up_to_fast_ones_and_never_down(digits, tmp_path):
    model = copy.deepcopy(trained_model(digits))
    imp = convslim.channel_importance(model, digits)
    table = BlockTable(tmp_path)
    snap = LatencySnap(model, imp.groups, table)
    group = next(g for g in imp.groups if g.consumers)
    assert snap(group, 9) == 12 and snap(group, 12) == 12 and snap(group, group.size) == group.size
    for cr in (0.5, 0.7, 0.9):
        plain, plain_kept = convslim.apply_rule(model, imp, "cr", cr)
        fast, fast_kept = convslim.apply_rule(model, imp, "cr", cr, latency=snap)
        for root, k in fast_kept.items():
            assert k >= plain_kept[root]                              # never fewer channels than the rule kept
            assert k % 4 == 0 or k == imp.channels()[root]           # a fast input count for the readers
        assert snap.predict_ms(fast) <= snap.predict_ms(plain)
        assert fast(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_measurements_are_cached_per_machine_and_reread(digits, tmp_path):
    model = trained_model(digits)
    layers = conv_layers(model, example_input(model))
    first = LatencyTable(cache_dir=tmp_path, repeats=2).curves(layers.values())
    assert first.measured > 0 and len(list(tmp_path.glob("*.json"))) == 1
    again = LatencyTable(cache_dir=tmp_path, repeats=2).curves(layers.values())
    assert again.measured == 0                                        # the second run measures nothing
    layer = layers["body.0.conv1"]
    assert again.layer_ms(layer, 8, 8) == first.layer_ms(layer, 8, 8)
    other = LatencyTable(cache_dir=tmp_path, batch=4, repeats=2).curves([layer])
    assert other.measured > 0                                         # another batch size is another table
    assert LatencyTable(cache_dir=tmp_path).curves(layers.values()).measured == 0   # merged, not overwritten
    cache = next(tmp_path.glob("*.json"))
    data = json.loads(cache.read_text())
    cache.write_text(json.dumps({**data, "machine": "another machine"}))
    assert LatencyTable(cache_dir=tmp_path, repeats=2).entries == {}  # another machine's timings are not used
    cache.write_text("{not json")
    assert LatencyTable(cache_dir=tmp_path, repeats=2).entries == {}


def test_timed_blocks_load_in_an_onnx_runtime_older_than_onnx():
    """onnx's newest IR version can be newer than what the user's ONNX Runtime reads (onnx 1.23 writes
    IR 14; ONNX Runtime 1.30 reads up to 13): the blocks declare opset 17's own IR version."""
    import onnx
    import onnxruntime

    block = _onnx_block(SHAPE, 4, 4, chain=2)
    assert onnx.load_from_string(block).ir_version == 8
    onnxruntime.InferenceSession(block, providers=["CPUExecutionProvider"])


def test_bad_latency_settings_are_refused(tmp_path):
    with pytest.raises(convslim.ConvslimError, match="unknown engine"):
        LatencyTable("tensorrt", cache_dir=tmp_path)
    with pytest.raises(convslim.ConvslimError, match="at least 1"):
        LatencyTable(batch=0, cache_dir=tmp_path)
    layer = ConvLayer("x", SHAPE, 4, 4)
    assert LatencyTable(cache_dir=tmp_path, repeats=2).layer_ms(layer, 4, 4) > 0


def test_latency_command_lists_layers_and_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVSLIM_CACHE", str(tmp_path / "cache"))
    plot, out = tmp_path / "lat.png", tmp_path / "lat.json"
    assert main(["latency", "--model", "digits_resnet", "--data", "digits", "--plot", str(plot),
                 "--json", str(out), "--latency-batch", "1,8"]) == 0
    text = capsys.readouterr().out
    assert "whole model" in text and "body.1.conv2" in text and plot.stat().st_size > 1000
    result = json.loads(out.read_text())
    assert set(result["batches"]) == {"1", "8"} and result["batches"]["1"]["layers"]
    assert main(["latency", "--model", "digits_resnet", "--data", "digits", "--plot", str(tmp_path / "x.jpg")]) == 2
    assert main(["latency", "--model", "digits_resnet", "--latency-batch", "0"]) == 2


def test_auto_target_latency_meets_a_measured_target(digits, tmp_path, monkeypatch, capsys):
    """The search logic on a deterministic 'engine' (time proportional to FLOPs), end to end
    through the command: the result meets the target, one step less pruning would not."""
    import convslim.pruning.auto as auto

    monkeypatch.setenv("CONVSLIM_CACHE", str(tmp_path / "cache"))
    x = torch.randn(1, 1, 8, 8)

    def fake_ms(model, shape, **kw):
        return convslim.count(model, x)["flops"] / 1e4

    monkeypatch.setattr(auto, "measure_model", fake_ms)
    model = copy.deepcopy(trained_model(digits))
    base = tmp_path / "base.pt"
    convslim.save(model, base)
    target = 0.6 * fake_ms(model, None)
    out, summary = tmp_path / "fast.pt", tmp_path / "fast.json"
    assert main(["auto", "--model", str(base), "--data", "digits", "--target-latency", f"{target:.4f}",
                 "--engine", "torch", "--latency-batch", "8", "--final-epochs", "0.2", "--out", str(out),
                 "--json", str(summary)]) == 0
    text = capsys.readouterr().out
    assert "measures" in text and "latency (torch, batch 8, 1 thread)" in text
    s = json.loads(summary.read_text())
    assert s["target"]["metric"] == "latency" and s["chosen_cr"] < 1 and s["flops"] / 1e4 <= target
    assert s["latency"][0]["batch"] == 8 and s["latency"][0]["engine"] == "torch"   # measured for real
    imp = convslim.channel_importance(model, digits)
    snap = LatencySnap(model, imp.groups, LatencyTable("torch", 8))
    less = convslim.apply_rule(model, imp, "cr", s["chosen_cr"] + 1 / 32, latency=snap)[0]
    assert fake_ms(less, None) > target                          # the least pruning that meets it
    assert convslim.load(out)(x).shape == (1, 10)
    assert main(["auto", "--model", str(base), "--data", "digits", "--target-latency", "1e-6", "--engine", "torch",
                 "--final-epochs", "0", "--out", str(tmp_path / "never.pt")]) == 2
    assert not (tmp_path / "never.pt").exists()


def test_your_own_snap_rule_is_taken(digits):
    """A user who knows the hardware passes snap(group, k) -> count directly."""
    model = trained_model(digits)
    imp = convslim.channel_importance(model, digits)
    eights = lambda group, k: min(group.size, -(-k // 8) * 8)      # noqa: E731
    slim, kept = convslim.apply_rule(model, imp, "cr", 0.6, latency=eights)
    plain = convslim.apply_rule(model, imp, "cr", 0.6)[1]
    assert all(k % 8 == 0 or k == imp.channels()[root] for root, k in kept.items())
    assert all(kept[root] >= plain[root] for root in kept) and kept != plain
    assert slim(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_a_bad_channel_count_is_one_clear_error(digits):
    model = trained_model(digits)
    imp = convslim.channel_importance(model, digits)
    root = imp.groups[0].root
    with pytest.raises(convslim.ConvslimError, match="cannot keep 0"):
        convslim.apply_rule(model, imp, "counts", {root: 0})
    with pytest.raises(convslim.ConvslimError, match="cannot keep 2.5"):
        convslim.apply_rule(model, imp, "counts", {root: 2.5})
    with pytest.raises(convslim.ConvslimError, match="no group root"):
        convslim.apply_rule(model, imp, "counts", {"not.a.layer": 2})
    slim, kept = convslim.apply_rule(model, imp, "counts", {root: 2})        # the others stay whole
    assert kept[root] == 2 and all(k == imp.channels()[r] for r, k in kept.items() if r != root)


def test_a_flops_target_takes_the_fastest_rounding_that_reads_as_well(digits, tmp_path, monkeypatch):
    """With a latency table and a FLOPs target, the model is rounded three ways (the table's snap,
    multiples of 8 and of 16) and each candidate is timed whole: the fastest wins unless its
    reading is more than the budget below the best one's. The 'engine' here is deterministic:
    a model whose convs all have multiples of 16 channels runs twice as fast per FLOP."""
    import convslim.pruning.auto as auto

    x = torch.randn(1, 1, 8, 8)
    model = copy.deepcopy(trained_model(digits))

    def by16(m):
        return all(c.out_channels % 16 == 0 for c in m.modules() if isinstance(c, torch.nn.Conv2d))

    def fake_compare(models, shape, **kw):
        return [convslim.count(m, x)["flops"] / 1e4 * (0.5 if by16(m) else 1.0) for m in models]

    monkeypatch.setattr(auto, "compare_ms", fake_compare)
    cfg = convslim.SearchConfig(probe_epochs=0.1, final_epochs=0, device="cpu", max_acc_loss=1.0)
    base_flops = convslim.count(model, x)["flops"]
    for damaged16, want16 in ((False, True), (True, False)):
        def evaluate(m):      # candidates with multiples of 16 read 40 points low in the second round
            return 50.0 if damaged16 and by16(m) and convslim.count(m, x)["flops"] < base_flops else 90.0

        slim, s = convslim.auto_prune(model, digits, cfg, target=("flops", 0.6), latency=BlockTable(tmp_path),
                                      evaluate=evaluate, progress=False, echo=lambda *a: None)
        ways = {r["rounding"]: r for r in s["roundings"]}
        assert set(ways) >= {"latency table", "multiple 16"} and sum(r["chosen"] for r in ways.values()) == 1
        chosen = next(r for r in ways.values() if r["chosen"])
        assert by16(slim) == want16 and (chosen["rounding"] == "multiple 16") == want16
        eligible = [r for r in ways.values() if r["val_acc"] >= max(w["val_acc"] for w in ways.values()) - 1.0]
        assert chosen["speedup"] == max(r["speedup"] for r in eligible)     # the fastest that reads as well
        assert s["flops"] <= 0.6 * base_flops and s["search_epochs"] == pytest.approx(0.1 * len(ways))
        assert slim(x).shape == (1, 10)
    same, s = convslim.auto_prune(model, digits, cfg, target=("flops", 1.0), latency=BlockTable(tmp_path),
                                  progress=False, echo=lambda *a: None)
    assert s["flops"] == base_flops and "roundings" not in s and s["search_epochs"] == 0   # nothing to time
