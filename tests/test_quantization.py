"""Quantization: formulas against hand-computed cases, calibration thresholds, STE gradients,
binary/ternary, k-means and Huffman round trips, real int8 on ONNX Runtime, CLI errors."""
import json
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convslim
from convslim import cli
from convslim.errors import ConvslimError
from convslim.quantization import binarize as B
from convslim.quantization import huffman, methods
from convslim.quantization.calibration import RangeObserver, kl_threshold_bin, percentile_threshold
from convslim.quantization.clustering import ClusterWeight, kmeans_1d
from convslim.quantization.fakequant import quantize_weights, strip
from convslim.quantization.quantizers import (QuantSpec, check_bits, dequantize, fake_quantize, qrange, quantize,
                                              scale_zero_point)
from convslim.quantization.storage import load_compressed, save_compressed
from convslim.binding import remember_data
from convslim.train import TrainConfig, fit


@pytest.fixture(scope="module")
def trained(digits):
    """A digitsnet trained for a few seconds (over 90 % test accuracy), with its data recorded."""
    torch.manual_seed(0)
    model = convslim.build_model("digitsnet", num_classes=10, in_channels=1, input_shape=list(digits.input_shape))
    remember_data(model, digits, "digits")
    fit(model, digits, TrainConfig(epochs=6, progress=False))
    return model.eval()


# --- formulas ---------------------------------------------------------------------------------

def test_asymmetric_formula_hand_computed():
    # seed eq. 2-2: S = (3 - -1) / 255, Z = round(0 - (-1) / S) = round(63.75) = 64
    s, z = scale_zero_point(-1.0, 3.0, 0, 255, symmetric=False)
    assert s.item() == pytest.approx(4 / 255) and z.item() == 64
    q = quantize(torch.tensor([-1.0, 0.0, 1.0, 3.0, 5.0]), s, z, 0, 255)
    assert q.tolist() == [0, 64, 128, 255, 255]          # 1/S = 63.75 -> 64 (+64); 5 clamps to 255
    assert dequantize(q, s, z)[1].item() == 0.0          # zero is exact


def test_symmetric_formula_rounds_half_to_even_and_clamps():
    assert qrange(4, symmetric=True) == (-7, 7)
    s, z = scale_zero_point(-0.7, 1.4, *qrange(4, symmetric=True), symmetric=True)
    assert s.item() == pytest.approx(0.2) and z.item() == 0
    q = quantize(torch.tensor([0.5, -0.3, 1.5, -2.0, 0.1]), s, z, -7, 7)
    assert q.tolist() == [2, -2, 7, -7, 0]               # 2.5 -> 2, -1.5 -> -2 (half to even), clamps


def test_ranges_and_bit_limits():
    assert qrange(8, symmetric=True) == (-127, 127)
    assert qrange(8, symmetric=True, reduce_range=True) == (-64, 64)      # ONNX Runtime's reduced int8
    assert qrange(8, symmetric=False) == (0, 255)
    assert qrange(2, symmetric=True) == (-1, 1)
    for bad in (0, 1, 9, 17, True, 4.0):
        with pytest.raises(ConvslimError, match="from 2 to 8"):
            check_bits(bad)


def test_range_widened_to_contain_zero():
    s, z = scale_zero_point(2.0, 4.0, 0, 255, symmetric=False)  # all positive: range becomes [0, 4]
    assert s.item() == pytest.approx(4 / 255) and z.item() == 0


def test_per_channel_scales():
    w = torch.zeros(3, 2, 3, 3)
    for c, m in enumerate((1.0, 2.0, 4.0)):
        w[c, 0, 0, 0], w[c, 1, 1, 1] = -m / 2, m
    spec = QuantSpec(8, symmetric=True, per_channel=True)
    scale, zp = spec.params(*spec.minmax(w))
    assert torch.allclose(scale, torch.tensor([1.0, 2.0, 4.0]) / 127) and (zp == 0).all()
    codes, codebook = spec.codes(w)
    assert codebook.shape == (3, 255)
    rows = torch.arange(3).view(3, 1, 1, 1).expand_as(codes)
    assert torch.equal(codebook[rows, codes], spec.fake(w))          # codes decode to the fake-quant values
    per_tensor = QuantSpec(8, symmetric=True).params(*QuantSpec(8).minmax(w))[0]
    assert per_tensor.item() == pytest.approx(4 / 127)


def test_ste_gradient_passes_inside_range_and_stops_where_clamped():
    x = torch.tensor([-3.0, -0.26, 0.0, 0.74, 3.0], requires_grad=True)
    s, z = scale_zero_point(-1.0, 1.0, -7, 7, symmetric=True)
    y = fake_quantize(x, s, z, -7, 7)
    y.backward(torch.ones_like(y))
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    w = torch.randn(4, 3, requires_grad=True)
    B.BinaryWeight()(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))                   # identity to the latent weights


# --- calibration --------------------------------------------------------------------------------

def test_percentile_threshold_on_known_histogram():
    hist, edges = np.ones(100), np.linspace(0, 10, 101)
    assert percentile_threshold(hist, edges, 90) == pytest.approx(9.0)
    assert percentile_threshold(hist, edges, 100) == pytest.approx(10.0)


def test_kl_threshold_saturates_a_long_tail():
    i = np.arange(2048)
    hist = np.floor(1e5 * np.exp(-i / 100.0))            # dense up to bin 1151, then empty
    hist[2047] = 3                                       # a few far outliers at the maximum
    t = kl_threshold_bin(hist, levels=128)
    assert 128 <= t < 1152                               # clipped: the outliers do not set the range
    flat = np.zeros(2048)
    flat[:1024] = 1000.0
    assert kl_threshold_bin(flat, levels=128) == 2048    # a flat histogram loses nothing: no clipping


def test_observers_minmax_vs_saturating():
    g = torch.Generator().manual_seed(0)
    x = torch.empty(50000).exponential_(generator=g)     # a post-ReLU-like tensor ...
    x[:2] = 40.0                                         # ... with two far outliers
    ranges = {}
    for m in ("minmax", "percentile", "kl"):
        o = RangeObserver(m)
        o.observe(x)
        if o.needs_histogram:
            o.observe_hist(x)
        ranges[m] = o.range()
    assert ranges["minmax"] == (float(x.min()), 40.0)
    assert ranges["percentile"][1] < 12 and ranges["kl"][1] < 20     # saturating: the outliers are clipped
    assert ranges["kl"][0] == ranges["minmax"][0]                   # the minimum is kept
    y = torch.cat([torch.randn(20000, generator=g), torch.tensor([-50.0])])
    o = RangeObserver("percentile", percentile=99.9)
    o.observe(y)
    o.observe_hist(y)
    lo, hi = o.range()
    assert -4 < lo < -2 and 2 < hi < 4                   # both tails, each side its own percentile


# --- binary, ternary, clustering ----------------------------------------------------------------

def test_binary_scale_and_ternary_threshold_are_optimal():
    w = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    q, alpha = B.binary_weights(w)
    assert torch.allclose(alpha, w.abs().reshape(3, -1).mean(1))
    assert torch.equal(q.sign(), torch.where(w >= 0, 1.0, -1.0))
    delta, alpha = B.ternary_params(w)
    for c in range(3):                                   # brute force over every threshold
        a = w[c].abs().flatten()
        best = min(((a - (a > d).float() * a[a > d].mean()) ** 2).sum().item() if (a > d).any() else a.pow(2).sum().item()
                   for d in torch.cat([a, torch.zeros(1)]))
        t = (a > delta[c]).float()
        assert ((a - t * alpha[c]) ** 2).sum().item() == pytest.approx(best, rel=1e-5)


def test_centroid_gradient_is_the_mean_of_its_cluster():
    conv = nn.Conv2d(2, 4, 3, bias=False)
    quantize_weights(conv, [("", conv)], lambda n, m: ClusterWeight(m.weight, 4))
    cw = conv.parametrizations.weight[0]
    x = torch.randn(2, 2, 5, 5)
    w = conv.weight
    w.retain_grad()
    F.conv2d(x, w).pow(2).sum().backward()
    summed = torch.zeros(4).index_add_(0, cw.indices.flatten(), w.grad.flatten())   # seed 001 eq. (1)
    sizes = torch.bincount(cw.indices.flatten(), minlength=4).clamp(min=1).float()
    assert torch.allclose(cw.centroids.grad, summed / sizes, atol=1e-6)  # one step size for any layer or k
    assert torch.equal(w, cw.centroids.detach()[cw.indices])             # the weights are still the centroids


def test_kmeans_codes_and_huffman_round_trip():
    v = np.random.default_rng(0).normal(size=2000)
    centroids, labels = kmeans_1d(v, 8)
    assert np.all(np.diff(centroids) > 0) and labels.max() == 7
    assert np.abs(v - centroids[labels]).max() < np.abs(v - v.mean()).max()
    rng = np.random.default_rng(1)
    for k, n in ((16, 5000), (2, 7), (1, 4)):
        sym = rng.choice(k, n, p=rng.dirichlet(np.ones(k) * 0.3)) if k > 1 else np.zeros(n, dtype=int)
        lengths = huffman.code_lengths(np.bincount(sym, minlength=k))
        data, nbits = huffman.encode(sym, lengths)
        assert np.array_equal(huffman.decode(data, nbits, n, lengths), sym)
    fib = [1, 1]
    while len(fib) < 26:
        fib.append(fib[-1] + fib[-2])
    sym = rng.permutation(np.repeat(np.arange(26), fib))            # codes longer than the table limit
    lengths = huffman.code_lengths(np.bincount(sym))
    assert lengths.max() > 20
    data, nbits = huffman.encode(sym, lengths)
    assert np.array_equal(huffman.decode(data, nbits, len(sym), lengths), sym)


@pytest.mark.parametrize("coding", ["huffman", "packed"])
def test_compressed_file_decodes_to_the_identical_model(trained, digits, tmp_path, coding):
    sim, res = methods.cluster(trained, digits, clusters=16, finetune=methods.FineTune(0))
    path = tmp_path / "m.csz"
    size = save_compressed(sim, path, coding=coding)
    back = load_compressed(path)
    plain_model = strip(sim)
    plain = plain_model.state_dict()
    assert set(back.state_dict()) == set(plain)
    assert all(torch.equal(back.state_dict()[k], plain[k]) for k in plain)
    assert size < res["fp32_bytes"] / 4
    x = digits.calibration(16)
    with torch.no_grad():
        assert torch.equal(back(x), plain_model(x))


def test_lowbit_and_ternary_simulation_store_their_codes(trained, digits, tmp_path):
    sim, res = methods.lowbit(trained, digits, wbits=4, abits=8, calib_images=64)
    assert res["top1"] > res["float_top1"] - 10 and "weights_only_top1" in res
    save_compressed(sim, tmp_path / "w4.csz")
    back, expected = load_compressed(tmp_path / "w4.csz").state_dict(), methods.decoded(trained, sim).state_dict()
    assert all(torch.equal(back[k], expected[k]) for k in expected)
    sim, res = methods.ternary(trained, digits, finetune=methods.FineTune(0))
    w = strip(sim).body[0].weight
    per_channel = [set(torch.unique(w[c].abs()).tolist()) - {0.0} for c in range(w.shape[0])]
    assert all(len(s) <= 1 for s in per_channel)         # one magnitude per channel: alpha * {-1, 0, 1}


# --- real int8 -----------------------------------------------------------------------------------

def test_int8_onnx_runs_and_keeps_accuracy(trained, digits, tmp_path):
    out = tmp_path / "m-int8.onnx"
    res = methods.ptq(trained, digits, out, calibration="minmax", calib_images=128, latency_batches=(1,))
    assert out.exists() and res["int8_onnx_bytes"] < res["fp32_onnx_bytes"] / 2
    assert res["float_top1"] > 90
    assert abs(res["top1"] - res["float_top1"]) <= 1.5             # real int8 on ONNX Runtime
    assert abs(res["sim_top1"] - res["top1"]) <= 1.5                # convslim's simulation agrees
    assert res["int8_latency_ms"]["b1_ms"] > 0


# --- CLI -----------------------------------------------------------------------------------------

@pytest.fixture()
def run(capsys):

    def call(*argv):
        rc = cli.main(list(argv))
        return rc, capsys.readouterr()
    return call


@pytest.mark.parametrize("extra, message", [
    (["--bits", "0"], "--bits must be an integer from 2 to 8"),
    (["--bits", "17"], "--bits must be an integer from 2 to 8"),
    (["--method", "lowbit", "--wbits", "1"], "--wbits must be an integer from 2 to 8"),
    (["--calib-images", "0"], "--calib-images: must be at least 1"),
    (["--calibration", "entropy"], "unknown calibration 'entropy'"),
    (["--latency-batch", "0"], "--latency-batch"),
    (["--threads", "0"], "--threads"),
])
def test_cli_bad_input_is_one_clear_line(run, tmp_path, extra, message):
    out = tmp_path / "m.onnx"
    rc, cap = run("quantize", "--model", "digitsnet", "--data", "digits", "--out", str(out), *extra)
    assert rc == 2 and not out.exists()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in cap.err


def test_cli_int8_is_timed_at_the_asked_batches_and_threads(run, trained, tmp_path):
    src, out, log = tmp_path / "m.pt", tmp_path / "m.onnx", tmp_path / "q.json"
    convslim.save(trained, src)
    rc, cap = run("quantize", "--model", str(src), "--data", "digits", "--calib-images", "64", "--out", str(out),
                  "--latency-batch", "2,8", "--threads", "1", "--json", str(log))
    assert rc == 0 and out.exists()
    res = json.loads(log.read_text())
    assert set(res["fp32_latency_ms"]) == set(res["int8_latency_ms"]) == {"b2_ms", "b8_ms"}
    assert res["latency_threads"] == 1 and "b8 (1 thread(s)): fp32" in cap.out


def test_cli_cluster_then_decompress(run, trained, tmp_path):
    src = tmp_path / "m.pt"
    convslim.save(trained, src)
    rc, cap = run("quantize", "--model", str(src), "--method", "cluster", "--clusters", "8", "--epochs", "0",
                  "--out", str(tmp_path / "m.csz"), "--quiet")
    assert rc == 0, cap.err
    assert "Huffman" in cap.out and (tmp_path / "m.csz").exists()
    rc, cap = run("decompress", "--model", str(tmp_path / "m.csz"), "--out", str(tmp_path / "back.pt"))
    assert rc == 0, cap.err
    assert convslim.load(tmp_path / "back.pt").classifier.weight.unique().numel() <= 8
    rc, cap = run("compress", "--model", str(src), "--pipeline", "huffman,cluster", "--out", str(tmp_path / "x.csz"))
    assert rc == 2 and "order" in cap.err
    rc, cap = run("decompress", "--model", str(src), "--out", str(tmp_path / "y.pt"))
    assert rc == 2 and "not a convslim compressed model" in cap.err and not (tmp_path / "y.pt").exists()


def test_report_section_table_and_plot(tmp_path):
    from convslim.report import Report
    from convslim.quantization.report import add_section

    results = [
        {"method": "fp32", "label": "fp32", "wbits": 32, "abits": 32, "top1": 98.0, "bytes": 150_000},
        {"method": "ptq", "calibration": "kl", "wbits": 8, "abits": 8, "top1": 97.9, "float_top1": 98.0,
         "int8_onnx_bytes": 40_000, "size_ratio": 3.75, "int8_latency_ms": {"b1_ms": 0.05}},
        {"method": "cluster", "clusters": 4, "wbits": 2, "abits": None, "top1": 90.0, "float_top1": 98.0,
         "huffman_bytes": 12_000, "size_ratio": 12.5},
    ]
    rep = Report(tmp_path / "rep", "q")
    add_section(rep, results)
    md = rep.write().read_text()
    assert "int8 PTQ (kl)" in md and "k-means 4" in md and "simulated" in md and "-8.00" in md
    assert (tmp_path / "rep" / "quantization.png").stat().st_size > 1000


# --- round trips: what a file restores is the model that was evaluated ----------------------------

def _outputs(model, digits):
    with torch.no_grad():
        return model.eval()(digits.calibration(64))


def test_decomposed_and_pruned_models_code_and_decode(trained, digits, tmp_path):
    """The .csz records the decomposition edits (replayed before and between channel removals), so
    decomposed, and decomposed then pruned, models decode: before, 'weights do not fit the model'
    and an AttributeError traceback from replaying removals on undecomposed layers."""
    from convslim.checkpoint import record_of
    from convslim.decomposition import decompose

    dec, _ = decompose(trained, "svd", 0.8)
    slim, _ = convslim.prune(dec, digits, ratio=0.3, calib_batches=1)
    assert record_of(slim).edits and record_of(slim).history
    for name, base in (("dec", dec), ("slim", slim)):
        for method in ("cluster", "ternary"):
            kw = {"clusters": 8} if method == "cluster" else {}
            sim, res = getattr(methods, method)(base, digits, finetune=methods.FineTune(0), **kw)
            path = tmp_path / f"{name}-{method}.csz"
            save_compressed(sim, path)
            back = load_compressed(path)
            assert record_of(back).edits == record_of(base).edits
            assert record_of(back).history == record_of(base).history
            expected = strip(sim).state_dict()
            assert set(back.state_dict()) == set(expected)
            assert all(torch.equal(back.state_dict()[k], expected[k]) for k in expected)
            assert methods.top1(back, digits) == res["top1"]


def test_xnor_file_restores_the_binarised_inputs(trained, digits, tmp_path):
    """Decoding gives exactly the model whose accuracy was reported, XNOR inputs included (before,
    the file held the binary weights alone and scored at chance), also through a .pt."""
    from convslim.checkpoint import record_of

    torch.manual_seed(0)
    sim, res = methods.binary(trained, digits, xnor=True, finetune=methods.FineTune(1, progress=False, seed=0))
    assert res["top1"] != res["weights_only_top1"]              # the input binarisation matters here
    save_compressed(sim, tmp_path / "x.csz")
    back = load_compressed(tmp_path / "x.csz")
    assert [e["op"] for e in record_of(back).edits] == ["xnor_inputs"]
    assert methods.top1(back, digits) == res["top1"]
    assert torch.allclose(_outputs(back, digits), _outputs(sim, digits), atol=1e-4)
    convslim.save(back, tmp_path / "x.pt")
    again = convslim.load(tmp_path / "x.pt")
    assert methods.top1(again, digits) == res["top1"]
    assert torch.equal(_outputs(again, digits), _outputs(back, digits))


def test_activation_quantizers_travel_with_the_file(trained, digits, tmp_path):
    from convslim.checkpoint import record_of

    sim, res = methods.lowbit(trained, digits, wbits=4, abits=4, calib_images=64)
    save_compressed(sim, tmp_path / "a.csz")
    back = load_compressed(tmp_path / "a.csz")
    assert [e["op"] for e in record_of(back).edits] == ["quantize_inputs"]
    assert methods.top1(back, digits) == res["top1"] != res["weights_only_top1"]
    convslim.save(back, tmp_path / "a.pt")
    assert torch.equal(_outputs(convslim.load(tmp_path / "a.pt"), digits), _outputs(back, digits))


def test_a_decoded_model_codes_again(trained, digits, tmp_path):
    """.csz -> decode -> .csz (lossless: the weights' own values become the codebook), and
    .csz -> .pt -> quantize again; a float model still has nothing to code."""
    for method, kw in (("cluster", {"clusters": 8}), ("lowbit", {"wbits": 4, "abits": None})):
        sim, _ = getattr(methods, method)(trained, digits, finetune=methods.FineTune(0), **kw)
        first = save_compressed(sim, tmp_path / f"{method}.csz")
        back = load_compressed(tmp_path / f"{method}.csz")
        second = save_compressed(back, tmp_path / f"{method}-again.csz")
        assert second <= first * 1.05
        again = load_compressed(tmp_path / f"{method}-again.csz")
        assert all(torch.equal(again.state_dict()[k], v) for k, v in back.state_dict().items())
    convslim.save(back, tmp_path / "back.pt")
    sim, res = methods.cluster(convslim.load(tmp_path / "back.pt"), digits, clusters=4, finetune=methods.FineTune(0))
    save_compressed(sim, tmp_path / "k4.csz")
    assert methods.top1(load_compressed(tmp_path / "k4.csz"), digits) == res["top1"]
    with pytest.raises(ConvslimError, match="no quantized or clustered layer"):
        save_compressed(trained, tmp_path / "float.csz")


def test_files_are_read_back_before_they_are_put_in_place(trained, digits, tmp_path, monkeypatch):
    from convslim.quantization import storage

    sim, _ = methods.cluster(trained, digits, clusters=8, finetune=methods.FineTune(0))
    frame = storage._frame

    def damaged(header, payload):
        data = bytearray(frame(header, payload))
        data[-5] ^= 0xFF
        return bytes(data)

    monkeypatch.setattr(storage, "_frame", damaged)
    with pytest.raises(ConvslimError, match="not written: reading it back"):
        save_compressed(sim, tmp_path / "m.csz")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    real_save = torch.save

    def lossy(obj, f, *a, **k):
        obj = dict(obj, state_dict={k2: v.clone() for k2, v in obj["state_dict"].items()})
        next(iter(obj["state_dict"].values())).add_(1)
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", lossy)
    with pytest.raises(ConvslimError, match="not written: reading it back gave different weights"):
        convslim.save(trained, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_model_this_process_cannot_rebuild_is_still_coded_and_checked(digits, tmp_path):
    """A model from code convslim cannot import again (a notebook class): the file is still read
    back and checked, the reported accuracy is still the decoded model's, and it decodes when the
    user passes the code."""
    from convslim.checkpoint import Record, attach

    def net():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        return attach(m.eval(), Record(arch={"model": "notebook:Net", "num_classes": 10, "in_channels": 1,
                                             "width": 1.0}, input_shape=[1, 8, 8]))

    sim, res = methods.binary(net(), digits, xnor=True, all_layers=True, finetune=methods.FineTune(0))
    save_compressed(sim, tmp_path / "n.csz")
    with pytest.raises(ConvslimError, match="zoo"):
        load_compressed(tmp_path / "n.csz")
    back = load_compressed(tmp_path / "n.csz", model=net())
    assert methods.top1(back, digits) == res["top1"]
    assert torch.allclose(_outputs(back, digits), _outputs(sim, digits), atol=1e-4)
