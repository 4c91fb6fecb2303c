"""Quantization and weight sharing (seed 003 section 2.2.1, seed 002 section 1.2, seed 001 section 1.2.2).

    from convslim.quantization import ptq, lowbit, cluster, save_compressed, load_compressed
    res = ptq(model, splits, "m-int8.onnx", calibration="kl")        # real int8 on ONNX Runtime
    sim, res = lowbit(model, splits, wbits=4, abits=8)              # fake-quant simulation
    sim, res = cluster(model, splits, clusters=16)                  # k-means weight sharing
    save_compressed(sim, "m.csz")                                   # codebook + Huffman indices
    model2 = load_compressed("m.csz")                               # the same model, decoded

Modules: quantizers (formulas), calibration (minmax / percentile / KL), fakequant (simulation and
QAT), binarize (BWN, XNOR, TWN), clustering (k-means), huffman, storage (the .csz file), onnx_int8
(ONNX Runtime static quantization), methods (one function per method), pipeline (Deep
Compression), report (report section), cli.
"""
from .calibration import RangeObserver, kl_threshold_bin, percentile_threshold
from .fakequant import calibrate, encode, simulate, strip
from .methods import FineTune, binary, cluster, int8_onnx, lowbit, ptq, qat, ternary
from .onnx_int8 import has_vnni, onnx_accuracy, quantize_onnx
from .pipeline import deep_compression
from .quantizers import QuantSpec, dequantize, fake_quantize, qrange, quantize, scale_zero_point
from .storage import load_compressed, save_compressed

__all__ = ["FineTune", "QuantSpec", "RangeObserver", "binary", "calibrate", "cluster", "deep_compression",
           "dequantize", "encode", "fake_quantize", "has_vnni", "int8_onnx", "kl_threshold_bin", "load_compressed",
           "lowbit", "onnx_accuracy", "percentile_threshold", "ptq", "qat", "qrange", "quantize", "quantize_onnx",
           "save_compressed", "scale_zero_point", "simulate", "strip", "ternary"]
