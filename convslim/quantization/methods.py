"""One function per quantization method, shared by the CLI, the benchmark and Python users.

Each takes a float model and data, leaves the model untouched, and returns a dict of measured
figures (accuracy before and after, sizes in bytes, latency where a real int8 kernel runs).
Methods that simulate (lowbit, binary, ternary, cluster) also return the quantized model, with
its quantizers still attached: `storage.save_compressed` writes it as codes, `storage.decode_model`
gives the plain model that file restores (input transforms such as XNOR or activation quantizers
included), and `fakequant.strip` bakes the weights in and drops the input transforms. Their `top1`
is the accuracy of the decoded model, so a saved file scores exactly what was reported.
"""
import copy
import os
import tempfile
from dataclasses import dataclass

import torch

from ..checkpoint import ensure_record, record_of
from ..errors import ConvslimError
from ..metrics import alternating, ort_latency_ms, state_dict_bytes
from ..batches import take_images
from ..task import trainer
from ..train import evaluate, recalibrate_bn
from . import binarize as binmod
from .clustering import cluster as cluster_weights
from .fakequant import layers_of, quantize_weights, simulate, strip
from .onnx_int8 import has_vnni, onnx_accuracy, quantize_onnx
from .quantizers import check_bits
from .storage import INPUT_OPS, coded_sizes, coded_state, decode_model

DEFAULT_EPOCHS = {"ptq": 0, "qat": 3, "lowbit": 0, "binary": 10, "ternary": 10, "cluster": 3}
# A centroid's gradient is the sum over its whole cluster (seed 001 eq. 1), thousands of weights,
# so the centroids need a smaller step than per-weight training.
DEFAULT_LR = {"qat": 0.01, "lowbit": 0.01, "binary": 0.01, "ternary": 0.01, "cluster": 0.01}


@dataclass
class FineTune:
    """Fine-tuning after quantization: a short, low learning-rate run of convslim.train.fit."""
    epochs: float = 0
    lr: float = 0.01
    batch_size: int = 128
    teacher: object = None          # a float model to distil from (convslim.kd.kd_loss_fn)
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def run(self, model, splits):
        if not self.epochs:
            return None
        plain, distil = trainer(splits, lr=self.lr, batch_size=self.batch_size, seed=self.seed, device=self.device,
                                progress=self.progress)
        log = distil(model, self.epochs, self.teacher) if self.teacher is not None else plain(model, self.epochs)
        model.cpu()
        return {"epochs": self.epochs, "lr": self.lr, "seconds": log["seconds"], "distilled": self.teacher is not None}


def top1(model, splits, split="test"):
    return evaluate(model, splits, split, device=torch.device("cpu"))["top1"]


def calibration_images(splits, n, seed=0):
    """`n` training images (never validation or test); zero images is a clear error."""
    if n is None or int(n) < 1:
        raise ConvslimError(f"calibration needs at least one image, got {n}")
    return splits.calibration(int(n), seed=seed)


def paired_latency(fp32_path, int8_path, shape, batches=(1, 64), repeats=10, rounds=3, threads=0):
    """Median ONNX Runtime latency of both files, measured in alternating rounds so that a busy,
    shared CPU slows both alike; returns ({batch: fp32 ms}, {batch: int8 ms})."""
    fp32, int8 = {}, {}
    for b in batches:
        x = torch.randn(b, *shape)
        fp32[f"b{b}_ms"], int8[f"b{b}_ms"] = alternating(
            [lambda p=p: ort_latency_ms(p, x, repeats=repeats, threads=threads) for p in (fp32_path, int8_path)], rounds)
    return fp32, int8


class OnnxModule(torch.nn.Module):
    """An ONNX file run by ONNX Runtime, callable like the model it came from, so a user's
    `evaluate(model)` scores the real int8 file with no change."""

    def __init__(self, path):
        super().__init__()
        from ..metrics import ort_session

        self.session = ort_session(path)
        self.input = self.session.get_inputs()[0].name

    def forward(self, x):
        out = self.session.run(None, {self.input: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def _scorers(data, evaluate):
    """(score a torch model, score an ONNX file): top-1 on the test split for convslim Splits, the
    user's evaluate otherwise (on the model, and on the file through OnnxModule)."""
    from ..data import Splits

    if evaluate is not None:
        return (lambda m: float(evaluate(m))), (lambda path: float(evaluate(OnnxModule(path))))
    if isinstance(data, Splits):
        return (lambda m: top1(m, data)), (lambda path: onnx_accuracy(path, data)["top1"])
    return None, None


def calibration_from(data, n, seed=0):
    """Calibration images: training images of convslim Splits, else the first inputs of the batches."""
    from ..data import Splits

    if isinstance(data, Splits):
        return calibration_images(data, n, seed)
    if n is None or int(n) < 1:
        raise ConvslimError(f"calibration needs at least one image, got {n}")
    return take_images(getattr(data, "batches", data), int(n))


def int8_onnx(model, data, out, *, calibration="minmax", calib_images=512, percentile=99.99, engine="convslim",
              seed=0, latency_batches=(1, 64), latency_threads=0, float_top1=None, simulation=True, method="ptq", evaluate=None,
              example_input=None):
    """Real int8 through ONNX Runtime: write `out`, then measure accuracy, size and latency fp32 vs int8.

    `data` is convslim Splits or any iterable of inputs / (input, target) pairs (your DataLoader);
    `evaluate(model) -> float` (your metric) scores the float model and the int8 file alike (the
    `*top1` keys then hold your metric; without it and without Splits, no accuracy is measured).
    Latency is timed at `latency_batches` with `latency_threads` ONNX Runtime threads (0: its choice).
    With `simulation`, convslim's fake-quant model (same calibration, ONNX Runtime's integer ranges)
    is scored too, to show that the simulation and the real int8 model agree.
    """
    ensure_record(model, example_input, None if example_input is not None else getattr(data, "batches", data))
    images = calibration_from(data, calib_images, seed)
    model = model.cpu().eval()
    shape = record_of(model).input_shape
    score, score_onnx = _scorers(data, evaluate)
    res = {"method": method, "wbits": 8, "abits": 8, "calibration": calibration, "engine": engine}
    if score is not None:
        res["float_top1"] = score(model) if float_top1 is None else float_top1
    reduce_range = not has_vnni()
    if simulation and score is not None:
        sim = simulate(model, wbits=8, abits=8, reduce_range=reduce_range, calibration=calibration,
                       percentile=percentile, images=images)
        res["sim_top1"] = score(sim)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = os.path.join(tmp, "fp32.onnx")
        res.update(quantize_onnx(model, out, images, calibration=calibration, percentile=percentile,
                                 engine=engine, reduce_range=reduce_range, fp32_out=fp32))
        if score_onnx is not None:
            res["fp32_onnx_top1"] = score_onnx(fp32)
            res["top1"] = score_onnx(out)
        if latency_batches:
            res["fp32_latency_ms"], res["int8_latency_ms"] = paired_latency(fp32, out, shape, latency_batches,
                                                                            threads=latency_threads)
        res["latency_threads"] = latency_threads
    res["size_ratio"] = res["fp32_onnx_bytes"] / res["int8_onnx_bytes"]
    return res


def ptq(model, data, out, **kw):
    """Post-training int8: calibrate activations, quantize weights per channel, through ONNX Runtime.
    Takes convslim Splits or your own batches and `evaluate` (see `int8_onnx`)."""
    return int8_onnx(model, data, out, method="ptq", **kw)


def qat(model, data, out, *, finetune=None, epochs=None, calibration="minmax", calib_images=512,
        percentile=99.99, seed=0, evaluate=None, example_input=None, **kw):
    """Quantization-aware training at 8 bits (fake quant, straight-through), then the same int8 export.

    Training starts from a PTQ-calibrated simulation; weight grids match ONNX Runtime's (per
    channel, reduced range without VNNI), and per-channel grids survive BatchNorm folding, so the
    exported model keeps what training learned. `finetune` is a FineTune (convslim's trainer on
    Splits) or your own `finetune(model, epochs)`, which then trains the fake-quant model for `epochs`.
    """
    ensure_record(model, example_input, None if example_input is not None else getattr(data, "batches", data))
    if callable(finetune) and not isinstance(finetune, FineTune):
        user_loop, n = finetune, DEFAULT_EPOCHS["qat"] if epochs is None else epochs
        finetune = None
    else:
        user_loop, n = None, None
        finetune = finetune or FineTune(DEFAULT_EPOCHS["qat"] if epochs is None else epochs, seed=seed)
    images = calibration_from(data, calib_images, seed)
    score, _ = _scorers(data, evaluate)
    score = score or (lambda m: float("nan"))
    float_top1 = score(model)
    sim = simulate(model, wbits=8, abits=8, reduce_range=not has_vnni(), calibration=calibration,
                   percentile=percentile, images=images)
    ptq_sim = score(sim)
    if finetune is not None:
        train = finetune.run(sim, data)
    else:
        user_loop(sim, n)
        train = {"epochs": n, "loop": "user"}
    qat_sim = score(sim)
    plain = strip(sim)
    res = int8_onnx(plain, data, out, calibration=calibration, calib_images=calib_images, percentile=percentile,
                    seed=seed, float_top1=float_top1, simulation=False, method="qat", evaluate=evaluate, **kw)
    res.update(ptq_sim_top1=ptq_sim, sim_top1=qat_sim, finetune=train)
    return res


def _coded_result(method, model, sim, splits, *, wbits, abits, float_top1, train=None, **extra):
    """Figures shared by the simulated methods. `top1` is the accuracy of the model the coded file
    restores (decoded from the encoded bytes, input transforms included), so a saved file scores
    exactly what was reported; with activation quantizers or XNOR inputs, `weights_only_top1` is
    the stored weights with float inputs, for comparison."""
    back = decode_model(sim, like=model)
    res = {"method": method, "wbits": wbits, "abits": abits, "float_top1": float_top1, "top1": top1(back, splits),
           "fp32_bytes": state_dict_bytes(model)}
    sizes = coded_sizes(sim)
    res.update(packed_bytes=sizes["packed"], huffman_bytes=sizes["huffman"],
               size_ratio=res["fp32_bytes"] / sizes["huffman"], finetune=train, **extra)
    if any(e.get("op") in INPUT_OPS for e in record_of(back).edits):
        res["weights_only_top1"] = top1(decoded(model, sim), splits)
    return res


def decoded(model, sim):
    """A plain copy of the float `model` carrying `sim`'s quantized weights and its own inputs
    (no activation quantizers or XNOR unless `model` had them): the stored weights alone.

    Built from the float model because a parametrized model must not be deep-copied: the copy
    would share its dynamically made class, and stripping one would break the other.
    """
    plain = copy.deepcopy(model).cpu().eval()
    state, own = coded_state(sim)[0], plain.state_dict()
    plain.load_state_dict({k: state.get(k, v) for k, v in own.items()})
    return plain


def lowbit(model, splits, *, wbits=4, abits=8, scheme="symmetric", granularity="channel", calibration="minmax",
           calib_images=512, percentile=99.99, finetune=None, seed=0):
    """b-bit fake quantization of weights (and activations unless `abits` is None); QAT when fine-tuned."""
    check_bits(wbits, "wbits")
    if abits is not None:
        check_bits(abits, "abits")
    images = calibration_images(splits, calib_images, seed) if abits is not None else None
    sim = simulate(model, wbits=wbits, abits=abits, scheme=scheme, granularity=granularity,
                   calibration=calibration, percentile=percentile, images=images)
    float_top1 = top1(model, splits)
    ptq_top1 = top1(sim, splits)
    train = (finetune or FineTune()).run(sim, splits)
    res = _coded_result("lowbit", model, sim, splits, wbits=wbits, abits=abits, float_top1=float_top1, train=train,
                        scheme=scheme, granularity=granularity, calibration=calibration, ptq_top1=ptq_top1)
    return sim.eval(), res


def binary(model, splits, *, stochastic=False, xnor=False, all_layers=False, finetune=None, seed=0):
    """Binary weights alpha * sign(W) per channel (BWN), XNOR inputs optionally; STE fine-tuning."""
    sim = copy.deepcopy(model).cpu().eval()
    layers = layers_of(sim, skip_ends=not all_layers)
    quantize_weights(sim, layers, lambda n, m: binmod.BinaryWeight(stochastic, m.weight))
    if xnor:
        binmod.binarize_inputs(layers)
    float_top1 = top1(model, splits)
    before = top1(sim, splits)
    train = (finetune or FineTune(DEFAULT_EPOCHS["binary"], seed=seed)).run(sim, splits)
    if stochastic:   # BatchNorm saw random weights while training; evaluation uses the sign
        for _, mod in layers:
            mod.parametrizations.weight[0].stochastic = False
        recalibrate_bn(sim, splits, device="cpu", seed=seed)
    res = _coded_result("binary", model, sim, splits, wbits=1, abits=1 if xnor else None, float_top1=float_top1,
                        train=train, stochastic=stochastic, xnor=xnor, all_layers=all_layers, before_finetune_top1=before)
    return sim.eval(), res


def ternary(model, splits, *, all_layers=False, finetune=None, seed=0):
    """Ternary weights alpha * {-1, 0, 1} per channel with TWN's optimal threshold; STE fine-tuning."""
    sim = copy.deepcopy(model).cpu().eval()
    quantize_weights(sim, layers_of(sim, skip_ends=not all_layers), lambda n, m: binmod.TernaryWeight())
    float_top1 = top1(model, splits)
    before = top1(sim, splits)
    train = (finetune or FineTune(DEFAULT_EPOCHS["ternary"], seed=seed)).run(sim, splits)
    res = _coded_result("ternary", model, sim, splits, wbits=2, abits=None, float_top1=float_top1, train=train,
                        all_layers=all_layers, before_finetune_top1=before)
    return sim.eval(), res


def cluster(model, splits, *, clusters=16, finetune=None, seed=0):
    """k-means weight sharing per layer, centroids fine-tuned by summed cluster gradients."""
    sim = cluster_weights(model, clusters, seed=seed)
    float_top1 = top1(model, splits)
    before = top1(sim, splits)
    train = (finetune or FineTune(DEFAULT_EPOCHS["cluster"], lr=DEFAULT_LR["cluster"], seed=seed)).run(sim, splits)
    bits = max(1, (clusters - 1).bit_length())
    res = _coded_result("cluster", model, sim, splits, wbits=bits, abits=None, float_top1=float_top1, train=train,
                        clusters=clusters, before_finetune_top1=before)
    return sim.eval(), res
