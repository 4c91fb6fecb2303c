"""Honest figures: parameters, MACs and FLOPs per layer, bytes on disk, measured latency.

What counts what (seed 002, section 2):
- MACs: multiply-accumulates of conv and linear layers, out_elems * (C_in/groups) * k_h * k_w for
  a conv and I * O for a linear layer (the convention behind "ResNet-56: 125 M").
- FLOPs: seed 002's formulas, conv 2*H*W*(C_in/groups*K^2 + 1)*C_out (H, W of the output; the +1
  is the bias, which a BatchNorm folded into the conv becomes at inference) and linear (2I - 1)*O.
- BatchNorm, activations, pooling and additions are counted in neither.
Latency is always measured: the median of repeated runs after warm-up, never estimated.
"""
import copy
import io
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from torch import nn

from .device import device_of
from .export import export_onnx, ort_session
from .hooks import run_with_hooks


def layer_table(model, example):
    """One row per conv / linear / norm layer: name, type, output shape, params, MACs, FLOPs.

    The example runs on the model's device, wherever it was made."""
    rows = []

    def hook(name):
        def record(mod, inputs, output):
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            macs = flops = 0
            if isinstance(mod, nn.Conv2d):
                out_c, out_h, out_w = output.shape[1:]
                per_out = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
                macs = out_h * out_w * out_c * per_out
                flops = 2 * out_h * out_w * (per_out + 1) * out_c
            elif isinstance(mod, nn.Linear):
                macs = mod.in_features * mod.out_features
                flops = (2 * mod.in_features - 1) * mod.out_features
            rows.append({"layer": name, "type": type(mod).__name__,
                         "output": list(output.shape[1:]), "params": params, "macs": macs, "flops": flops})
        return record

    run_with_hooks(model, {mod: hook(name) for name, mod in model.named_modules()
                           if isinstance(mod, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm))},
                   example.to(device_of(model)))
    return rows


def count(model, example):
    """Totals: all parameters of the model (not only profiled layers), MACs, FLOPs."""
    rows = layer_table(model, example)
    return {"params": sum(p.numel() for p in model.parameters()),
            "macs": sum(r["macs"] for r in rows), "flops": sum(r["flops"] for r in rows)}


def state_dict_bytes(model):
    """Bytes of the saved weights (torch.save of the state dict), what a .pt costs on disk."""
    state = model.state_dict()
    for k, v in state.items():   # a checkpoint holds CPU tensors (the storage's device is saved too)
        state[k] = v.cpu()
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer().nbytes


def median_ms(fn, warmup, repeats):
    """Median wall time of fn() in ms over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def torch_latency_ms(model, example, *, warmup=5, repeats=20):
    model = model.eval()
    with torch.inference_mode():
        return median_ms(lambda: model(example), warmup, repeats)


def ort_latency_ms(onnx_path, example, *, warmup=5, repeats=20, threads=0):
    """Median ms of ONNX Runtime on the CPU (`threads` intra-op threads; 0: ONNX Runtime's choice)."""
    sess = ort_session(onnx_path, threads)
    feed = {sess.get_inputs()[0].name: example.numpy().astype(np.float32)}
    return median_ms(lambda: sess.run(None, feed), warmup, repeats)


def latency(model, input_shape, *, batches=(1, 64), warmup=5, repeats=20, onnx=True, threads=None):
    """Median latency in ms for each batch size, PyTorch on CPU and (optionally) ONNX Runtime, with
    `threads` threads in both (None: PyTorch's current setting and ONNX Runtime's own choice).

    A model on another device is timed as a CPU copy; the caller's model stays where it is."""
    if device_of(model).type != "cpu":
        model = copy.deepcopy(model).cpu()
    model = model.eval()
    out, before = {}, torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        _time_batches(model, input_shape, batches, warmup, repeats, onnx, threads or 0, out)
    finally:
        torch.set_num_threads(before)
    out["threads"] = threads or before
    return out


def _time_batches(model, input_shape, batches, warmup, repeats, onnx, threads, out):
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        if onnx:
            export_onnx(model, onnx_path, input_shape, verify=False)
        for b in batches:
            x = torch.randn(b, *input_shape)
            out[f"torch_b{b}_ms"] = torch_latency_ms(model, x, warmup=warmup, repeats=repeats)
            if onnx:
                out[f"ort_b{b}_ms"] = ort_latency_ms(onnx_path, x, warmup=warmup, repeats=repeats, threads=threads)


def alternating(timers, rounds=3):
    """Each timer's median over `rounds` rounds that alternate between them, so a slow spell on a
    shared CPU slows all alike; a timer returns ms, or a dict of ms (medians taken per key)."""
    runs = [[] for _ in timers]
    for _ in range(rounds):
        for i, timer in enumerate(timers):
            runs[i].append(timer())
    if isinstance(runs[0][0], dict):
        return [{k: statistics.median(r[k] for r in rs) for k in rs[0]} for rs in runs]
    return [statistics.median(rs) for rs in runs]


def profile(model, input_shape, *, latency_batches=(1, 64), repeats=20, onnx=True, threads=None):
    """Everything `convslim profile` prints: per-layer rows, totals, size, latency."""
    example = torch.randn(1, *input_shape, device=device_of(model))
    rows = layer_table(model, example)
    totals = count(model, example)
    totals["bytes"] = state_dict_bytes(model)
    result = {"input_shape": list(input_shape), "layers": rows, "totals": totals}
    if latency_batches:
        result["latency"] = latency(model, input_shape, batches=latency_batches, repeats=repeats, onnx=onnx,
                                    threads=threads)
    return result


def human(n, unit=""):
    """1234567 -> '1.23 M' style, for tables."""
    for div, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()
