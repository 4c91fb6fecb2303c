"""A latency model of the deployment engine: per conv layer, measured time against channel count.

FLOPs are not time. On x86, ONNX Runtime's convolutions work on channel blocks (8 floats with
AVX2, 16 with AVX-512), so 17 output channels can cost what 32 do and an odd input count can
double a layer's time. So, as HALP and NetAdapt do, convslim measures instead of guessing: each
conv layer (conv + folded BN + ReLU, at its own input size) is timed alone on the engine the user
deploys to, once with its output channels and once with its input channels swept over a range of
counts, the other side at its original width. A layer's time at (c_in, c_out) is read from the
two curves, assuming the two effects multiply:

    t(c_in, c_out) ~= t_out(c_out) * t_in(c_in) / t(n_in, n_out)

Measurements are cached per machine (CPU, instruction sets, engine version), engine, batch size
and thread count, so a second run on the same machine measures nothing. The model's own latency
is always measured as a whole when a figure is reported; the table only steers choices.
"""
import hashlib
import json
import math
import os
import platform
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ConvslimError
from .fileio import write_text_atomic
from .hooks import run_with_hooks
from .metrics import median_ms

ENGINES = ("ort", "torch")


@dataclass(frozen=True)
class ConvShape:
    """What a conv layer's time depends on, apart from its channel counts."""
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    depthwise: bool
    height: int              # input height and width
    width: int

    @property
    def key(self):
        return (f"k{self.kernel[0]}x{self.kernel[1]}s{self.stride[0]}x{self.stride[1]}p{self.padding[0]}x"
                f"{self.padding[1]}d{self.dilation[0]}x{self.dilation[1]}{'dw' if self.depthwise else ''}"
                f"@{self.height}x{self.width}")


@dataclass
class ConvLayer:
    name: str
    shape: ConvShape
    in_channels: int
    out_channels: int


def conv_layers(model, example):
    """Every plain or depthwise Conv2d of `model` with its input size (one forward pass); grouped
    convs that are not depthwise are left out (convslim never prunes them)."""
    found = {}

    def hook(name):
        def record(mod, inputs, output):
            h, w = inputs[0].shape[-2:]
            depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
            pad = mod.padding if isinstance(mod.padding, tuple) else (0, 0)
            found[name] = ConvLayer(name, ConvShape(tuple(mod.kernel_size), tuple(mod.stride), tuple(pad),
                                                    tuple(mod.dilation), depthwise, int(h), int(w)),
                                    mod.in_channels, mod.out_channels)
        return record

    convs = {m: hook(n) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and (m.groups == 1 or m.groups == m.in_channels == m.out_channels)}
    run_with_hooks(model, convs, example)
    return found


def sweep_counts(n):
    """The channel counts measured for a layer of width n: every count up to 64, above that every
    multiple of a power of two (at most about 32 points), and n itself."""
    if n <= 64:
        return list(range(1, n + 1))
    step = 2 ** int(math.log2(n / 32))
    return sorted({*range(step, n + 1, step), n})


def _onnx_block(shape, c_in, c_out, chain=1):
    """Conv (with the bias a folded BatchNorm becomes) + ReLU as a serialized ONNX model; with
    `chain` > 1, that many such square blocks in a row (c_in == c_out, stride 1)."""
    from onnx import TensorProto, helper, numpy_helper

    groups = c_in if shape.depthwise else 1
    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for i in range(chain):
        w = rng.standard_normal((c_out, c_in // groups, *shape.kernel)).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(c_out, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"y{i}"], kernel_shape=list(shape.kernel),
                                   strides=list(shape.stride), dilations=list(shape.dilation), group=groups,
                                   pads=[shape.padding[0], shape.padding[1]] * 2),
                  helper.make_node("Relu", [f"y{i}"], [f"z{i}"])]
        x = f"z{i}"
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c_in, shape.height, shape.width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], weights)
    # IR version 8 is opset 17's own: onnx's newest default can be newer than the user's ONNX Runtime reads
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def measure_block(shape, c_in, c_out, *, engine="ort", batch=1, threads=1, warmup=3, repeats=15, chain=1):
    """Median ms of one conv + BN + ReLU block (or `chain` square ones in a row) on `engine` at
    `batch`, with `threads` threads."""
    x = np.random.default_rng(0).standard_normal((batch, c_in, shape.height, shape.width)).astype(np.float32)
    if engine == "ort":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(_onnx_block(shape, c_in, c_out, chain), opts, providers=["CPUExecutionProvider"])
        return median_ms(lambda: sess.run(None, {"x": x}), warmup, repeats)
    if engine == "torch":
        block = nn.Sequential(*[nn.Sequential(
            nn.Conv2d(c_in, c_out, shape.kernel, shape.stride, shape.padding, shape.dilation,
                      groups=c_in if shape.depthwise else 1), nn.BatchNorm2d(c_out), nn.ReLU())
            for _ in range(chain)]).eval()
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                xt = torch.from_numpy(x)
                return median_ms(lambda: block(xt), warmup, repeats)
        finally:
            torch.set_num_threads(before)
    raise ConvslimError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def machine_id():
    """What makes one machine's timings differ from another's: CPU, its vector extensions, the
    engine versions. Hashed into the cache file name."""
    cpu, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = " ".join(sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma"))))
    except OSError:
        pass
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = ""
    text = f"{platform.machine()}|{cpu}|{flags}|{os.cpu_count()}|torch {torch.__version__}|ort {ort_version}"
    return hashlib.sha256(text.encode()).hexdigest()[:16], text


def default_cache_dir():
    return Path(os.environ.get("CONVSLIM_CACHE", Path.home() / ".cache" / "convslim")) / "latency"


class LatencyTable:
    """Measured block latencies on one engine / batch / thread count, cached per machine.

    `table.curves(layers)` measures what is missing; `table.layer_ms(layer, c_in, c_out)` reads a
    layer's time at other channel counts; `table.model_ms(layers, counts)` sums a model's convs.
    """

    def __init__(self, engine="ort", batch=1, threads=1, cache_dir=None, repeats=25, echo=None):
        if engine not in ENGINES:
            raise ConvslimError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        if batch < 1 or threads < 1:
            raise ConvslimError(f"latency batch and threads must be at least 1, got {batch} and {threads}")
        self.engine, self.batch, self.threads, self.repeats = engine, batch, threads, repeats
        self.echo = echo
        mid, self.machine = machine_id()
        self.path = Path(cache_dir) if cache_dir else default_cache_dir()
        self.path = self.path / f"{mid}.json"
        self.entries = self._read()
        self.measured = 0          # blocks timed by this table (not read from the cache)

    def _read(self):
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return dict(data["entries"]) if data.get("machine") == self.machine else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}   # an unreadable cache is re-measured, never trusted

    def _write(self):
        """Merge into the file: tables for other batches or engines share it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries = {**self._read(), **self.entries}
        write_text_atomic(self.path, json.dumps({"machine": self.machine, "entries": self.entries}, indent=0))

    def _key(self, shape, c_in, c_out, chain=1):
        return f"{self.engine}|b{self.batch}|t{self.threads}|{shape.key}|{c_in}|{c_out}" + (f"|x{chain}" if chain > 1 else "")

    def block_ms(self, shape, c_in, c_out, chain=1):
        """One block's time (or a chain's), from the cache or measured now (and cached)."""
        if shape.depthwise:
            c_in = c_out = max(c_in, c_out)
        key = self._key(shape, c_in, c_out, chain)
        if key not in self.entries:
            self.entries[key] = measure_block(shape, c_in, c_out, engine=self.engine, batch=self.batch,
                                              threads=self.threads, repeats=self.repeats, chain=chain)
            self.measured += 1
        return self.entries[key]

    def boundary_ms(self, shape, c):
        """What a block timed alone pays at its edges and a block inside a network does not: ONNX
        Runtime reorders a blocked-layout conv's input and output to and from the plain layout.
        One square block minus the per-block time inside a chain of three (edges cancel there)."""
        if self.engine != "ort":
            return 0.0
        square = replace(shape, stride=(1, 1))
        one, three = self.block_ms(square, c, c), self.block_ms(square, c, c, chain=3)
        return max(0.0, one - (three - one) / 2)

    def _needed(self, layer, side):
        """(shape, c_in, c_out, chain) of every measurement one sweep needs."""
        n = layer.out_channels if side == "out" else layer.in_channels
        for c in sweep_counts(n):
            pair = (c, c) if layer.shape.depthwise else ((layer.in_channels, c) if side == "out"
                                                          else (c, layer.out_channels))
            yield (layer.shape, *pair, 1)
            if self.engine == "ort":
                square = replace(layer.shape, stride=(1, 1))
                for k in {*pair}:
                    yield (square, k, k, 1)
                    yield (square, k, k, 3)

    def curves(self, layers, sides=("out", "in")):
        """Measure every sweep of `layers` that the cache lacks; saved once at the end."""
        todo = list(dict.fromkeys(m for layer in layers for side in sides for m in self._needed(layer, side)
                                  if self._key(*m) not in self.entries))
        if todo and self.echo:
            self.echo(f"measuring {len(todo)} conv blocks on {self.engine} (batch {self.batch}, "
                      f"{self.threads} thread{'s' if self.threads > 1 else ''}); cached for this machine in {self.path}")
        try:
            for shape, c_in, c_out, chain in todo:
                self.block_ms(shape, c_in, c_out, chain)
        finally:
            if self.measured:
                self._write()
        return self

    def in_network_ms(self, layer, c_in, c_out):
        """A block's time alone, less the reorders a network of blocked-layout convs does not pay
        (half of the edge cost at each side; the output side at the output resolution)."""
        alone = self.block_ms(layer.shape, c_in, c_out)
        edges = (self.boundary_ms(layer.shape, c_in)
                 + self.boundary_ms(layer.shape, c_out) / (layer.shape.stride[0] * layer.shape.stride[1])) / 2
        return max(alone - edges, 0.1 * alone)

    def curve(self, layer, side):
        """{count: ms in a network} along one side, the other at the layer's original width."""
        n = layer.out_channels if side == "out" else layer.in_channels
        if layer.shape.depthwise:
            return {c: self.in_network_ms(layer, c, c) for c in sweep_counts(n)}
        if side == "out":
            return {c: self.in_network_ms(layer, layer.in_channels, c) for c in sweep_counts(n)}
        return {c: self.in_network_ms(layer, c, layer.out_channels) for c in sweep_counts(n)}

    def layer_ms(self, layer, c_in, c_out):
        """The layer's time at (c_in, c_out) from its two curves (counts between measured ones take
        the next measured count up, as a kernel working on blocks would)."""
        if layer.shape.depthwise:
            return _at(self.curve(layer, "out"), c_out)
        full = self.in_network_ms(layer, layer.in_channels, layer.out_channels)
        return _at(self.curve(layer, "out"), c_out) * _at(self.curve(layer, "in"), c_in) / full

    def model_ms(self, layers, counts=None):
        """Sum of the conv layers' times; `counts` maps a layer name to its (c_in, c_out) now."""
        counts = counts or {}
        return sum(self.layer_ms(l, *counts.get(l.name, (l.in_channels, l.out_channels))) for l in layers.values())


def _at(curve, c):
    """A curve's value at count c, or at the next measured count above it."""
    if c in curve:
        return curve[c]
    above = [k for k in curve if k >= c]
    return curve[min(above)] if above else curve[max(curve)]


def current_counts(model):
    """(c_in, c_out) of every conv of `model` as it is now."""
    return {n: (m.in_channels, m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def measure_model(model, input_shape, *, engine="ort", batch=1, threads=1, warmup=5, repeats=30):
    """Median ms of the whole model on `engine` (a CPU copy; ONNX Runtime runs the exported graph)."""
    import copy
    import tempfile

    from .device import device_of
    from .export import export_onnx

    if device_of(model).type != "cpu":
        model = copy.deepcopy(model).cpu()
    model = model.eval()
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    if engine == "torch":
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                return median_ms(lambda: model(x), warmup, repeats)
        finally:
            torch.set_num_threads(before)
    if engine != "ort":
        raise ConvslimError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, input_shape, verify=False)
        return measure_onnx(path, input_shape, batch=batch, threads=threads, warmup=warmup, repeats=repeats)


def measure_onnx(path, input_shape, *, batch=1, threads=1, warmup=5, repeats=30):
    """Median ms of an ONNX file (fp32 or int8) in ONNX Runtime on the CPU with `threads` threads."""
    from .export import ort_session

    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    sess = ort_session(path, threads=threads)
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return median_ms(lambda: sess.run(None, feed), warmup, repeats)


def compare_ms(models, input_shape, *, engine="ort", batch=1, threads=1, repeats=30, rounds=3):
    """Each model's time as the median of `rounds` rounds that alternate between the models, so
    a slow spell on a shared machine slows all of them alike."""
    from .metrics import alternating

    return alternating([lambda m=m: measure_model(m, input_shape, engine=engine, batch=batch, threads=threads,
                                                  repeats=repeats) for m in models], rounds)
