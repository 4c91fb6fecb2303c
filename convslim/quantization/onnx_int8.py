"""Real int8: ONNX Runtime's static quantization (QDQ), calibrated by convslim, measured for real.

The float model is exported (convslim.export) and pre-processed (shape inference, BatchNorm and
Identity folding, ONNX Runtime's recommended step), then `quantize_static` writes QDQ:
weights int8 symmetric per output channel, activations uint8 asymmetric per tensor (ONNX
Runtime's advice for x86 CPUs, and the seeds'). `reduce_range` (7-bit weights) is switched on
where the CPU lacks VNNI (no avx512_vnni / avx_vnni flag), as ONNX Runtime recommends, because
the AVX2 kernels add pairs of int8 products into 16-bit sums that full-range weights can overflow.

Activation ranges: with `engine="convslim"` every float tensor of the graph is observed over the
calibration images by convslim's own calibrators (minmax / percentile / kl, the same code as the
PyTorch simulation) and handed to ONNX Runtime as its calibration cache, so the simulation and the
int8 model use the same thresholds. `engine="ort"` uses ONNX Runtime's calibrators instead
(MinMax, Percentile, Entropy), as a cross-check.
"""
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from ..errors import ConvslimError
from ..export import export_onnx
from ..fileio import atomic_path
from .calibration import RangeObserver, check_method

ENGINES = ("convslim", "ort")


def cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_vnni(flags=None):
    """True when ONNX Runtime's int8 kernels can use VNNI (x86) or dot-product (ARM) instructions."""
    flags = cpu_flags() if flags is None else set(flags)
    return bool(flags & {"avx512_vnni", "avx_vnni", "asimddp"})


try:
    from onnxruntime.quantization import CalibrationDataReader as _ReaderBase
except ImportError:  # pragma: no cover - onnxruntime is a dependency
    _ReaderBase = object


class ImageReader(_ReaderBase):
    """ONNX Runtime calibration data reader over a float image tensor (convslim's calibration set)."""

    def __init__(self, images, input_name="input", batch_size=32):
        if len(images) == 0:
            raise ConvslimError("calibration needs at least one image, got 0")
        self.images = images.detach().cpu().float().numpy()
        self.input_name, self.batch_size = input_name, batch_size
        self.set_range(0, len(self.images))

    def get_next(self):
        if self._pos >= self._end:
            return None
        batch = self.images[self._pos:min(self._pos + self.batch_size, self._end)]
        self._pos += self.batch_size
        return {self.input_name: batch}

    def rewind(self):
        self._pos = self._start

    def set_range(self, start_index, end_index):
        self._start, self._end = start_index, min(end_index, len(self.images))
        self._pos = start_index

    def __len__(self):
        return len(self.images)


def preprocess(src, dst):
    """ONNX Runtime's quantization pre-processing (shape inference, graph optimisation)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception:  # symbolic shape inference fails on some graphs; the ONNX one suffices
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def float_tensors(model_path):
    """Names of the graph input and every float tensor a node produces (what may get quantized)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.output) + list(g.input)}
    inits = {i.name for i in g.initializer}
    names = [i.name for i in g.input if i.name not in inits]
    for node in g.node:
        names += [o for o in node.output if o and types.get(o) == onnx.TensorProto.FLOAT]
    return list(dict.fromkeys(names))


def collect_ranges(model_path, reader, *, method="minmax", percentile=99.99, bits=8):
    """{tensor: (lo, hi)} for every float tensor, from convslim's calibrators (two passes if needed)."""
    from ..metrics import ort_session

    names = float_tensors(model_path)
    model = onnx.load(str(model_path))
    have = {o.name for o in model.graph.output}
    for n in names:
        if n not in have and n not in {i.name for i in model.graph.input}:
            model.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "observed.onnx")
        onnx.save(model, path)
        sess = ort_session(path)
        outputs = [o.name for o in sess.get_outputs()]
        observers = {n: RangeObserver(method, bits=bits, percentile=percentile) for n in names}
        for stage in ("observe", "observe_hist") if observers[names[0]].needs_histogram else ("observe",):
            reader.rewind()
            for feed in iter(reader.get_next, None):
                values = dict(zip(outputs, sess.run(outputs, feed)))
                values.update(feed)
                for n, obs in observers.items():
                    getattr(obs, stage)(torch.from_numpy(np.asarray(values[n])))
    return {n: obs.range() for n, obs in observers.items()}


def quantize_onnx(model, out, images, *, calibration="minmax", percentile=99.99, engine="convslim",
                  per_channel=True, reduce_range=None, batch_size=32, fp32_out=None):
    """Write a QDQ int8 ONNX model of `model`, calibrated on `images`; returns what was done.

    `reduce_range=None` decides from the CPU (on without VNNI). `fp32_out` also keeps the
    pre-processed float model, the fair baseline for size and latency. The file appears only if
    every step succeeded.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    from ..checkpoint import record_of

    check_method(calibration)
    if engine not in ENGINES:
        raise ConvslimError(f"unknown calibration engine {engine!r}; choose {' or '.join(ENGINES)}")
    reduce_range = (not has_vnni()) if reduce_range is None else bool(reduce_range)
    input_shape = record_of(model).input_shape
    reader = ImageReader(images, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "pre.onnx")
        export_onnx(model, fp32, input_shape)
        preprocess(fp32, pre)
        extra = {}
        cache = None
        if engine == "convslim":
            ranges = collect_ranges(pre, reader, method=calibration, percentile=percentile)
            cache = os.path.join(tmp, "calibration.json")
            save_tensors_data(TensorsData(CalibrationMethod.MinMax, {
                n: (np.array(lo, dtype=np.float32), np.array(hi, dtype=np.float32)) for n, (lo, hi) in ranges.items()}),
                cache)
            method = CalibrationMethod.MinMax
        else:
            method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                      "kl": CalibrationMethod.Entropy}[calibration]
            if calibration == "percentile":
                extra["CalibPercentile"] = percentile
        reader.rewind()
        with atomic_path(out) as tmp_out:
            try:
                quantize_static(pre, str(tmp_out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                                reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=method, extra_options=extra,
                                calibration_cache_path=cache)
            except ConvslimError:
                raise
            except Exception as exc:
                raise ConvslimError(f"ONNX Runtime quantization failed: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        fp32_bytes = os.path.getsize(pre)
        fp32_weights = weight_bytes(pre)
        if fp32_out is not None:
            shutil.copyfile(pre, fp32_out)
    return {"calibration": calibration, "engine": engine, "percentile": percentile, "per_channel": per_channel,
            "reduce_range": reduce_range, "vnni": has_vnni(), "calibration_images": len(images),
            "fp32_onnx_bytes": fp32_bytes, "int8_onnx_bytes": os.path.getsize(out),
            "fp32_weight_bytes": fp32_weights, "int8_weight_bytes": weight_bytes(out)}


def weight_bytes(path):
    """Bytes of the graph's initializers alone (the file adds node and tensor names, a few % to 20 %)."""
    from onnx import numpy_helper

    return int(sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer))


def onnx_accuracy(onnx_path, splits, split="test", *, batch_size=256, limit=None):
    """Top-1 / top-5 of an ONNX model through ONNX Runtime on a convslim split."""
    from ..metrics import ort_session

    sess = ort_session(onnx_path)
    name = sess.get_inputs()[0].name
    k = min(5, splits.num_classes)
    top1 = top5 = n = 0
    for x, y in splits.loader(split, batch_size, shuffle=False, augment=False, limit=limit, even=False):
        logits = torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
        top = logits.topk(k, 1).indices
        top1 += int((top[:, 0] == y).sum())
        top5 += int((top == y[:, None]).any(1).sum())
        n += len(y)
    if n == 0:
        raise ConvslimError(f"the {split} split is empty")
    return {"split": split, "top1": 100 * top1 / n, "top5": 100 * top5 / n, "images": n}
