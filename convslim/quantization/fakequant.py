"""Fake quantization inside an ordinary model: PTQ simulation and quantization-aware training.

Weights are quantized through `torch.nn.utils.parametrize`: the layer keeps its float weight
(the latent weight training updates) and sees its quantized version on every forward, with
straight-through gradients. Activations are quantized at each layer's input by an `ActQuant`
child and a forward pre-hook, so module names, and therefore checkpoints and channel-removal
history, stay as they were. `strip` bakes the quantized weights in and removes both, leaving a
plain model whose weights lie exactly on the grid (what the compressed file stores).
"""
import copy

import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm import tqdm

from ..checkpoint import device_of
from ..errors import ConvslimError
from .calibration import RangeObserver, check_method
from .quantizers import QuantSpec

LAYERS = (nn.Conv2d, nn.Linear)


class UniformWeight(nn.Module):
    """Weight parametrization: linear fake quantization with the weight's own min/max range."""

    def __init__(self, spec):
        super().__init__()
        self.spec = spec

    def forward(self, w):
        return self.spec.fake(w)

    def encode(self, w):
        return self.spec.codes(w)

    def extra_repr(self):
        return f"bits={self.spec.bits}, symmetric={self.spec.symmetric}, per_channel={self.spec.per_channel}"


class ActQuant(nn.Module):
    """Fake-quantizes a layer's input with a calibrated range [lo, hi].

    Modes: 'observe' and 'hist' collect calibration statistics and pass the input through;
    'quant' fake-quantizes. While training (QAT) the range follows an exponential moving average
    of each batch's min and max, so it tracks the weights as they change.
    """

    def __init__(self, spec, method="minmax", percentile=99.99, momentum=0.01):
        super().__init__()
        self.spec, self.method, self.percentile, self.momentum = spec, check_method(method), percentile, momentum
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.mode = "observe"
        self.observer = None

    def forward(self, x):
        if self.mode == "observe":
            self.observer.observe(x)
            return x
        if self.mode == "hist":
            self.observer.observe_hist(x)
            return x
        if self.training:
            with torch.no_grad():
                m = self.momentum
                self.lo.mul_(1 - m).add_(m * x.min())
                self.hi.mul_(1 - m).add_(m * x.max())
        return self.spec.fake(x, self.lo, self.hi)

    def extra_repr(self):
        return f"bits={self.spec.bits}, symmetric={self.spec.symmetric}, range=[{float(self.lo):.4g}, {float(self.hi):.4g}]"


def _quantize_input(module, args):
    return (module.act_quant(args[0]),) + tuple(args[1:])


_quantize_input.convslim_quant = True   # `strip` removes every hook marked so


def layers_of(model, *, skip_ends=False):
    """The conv and linear layers to quantize, in definition order; optionally not the first and last.

    Binary and ternary networks keep the first and the last layer in full precision (XNOR-Net,
    TWN): they hold few weights and the accuracy depends on them most.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LAYERS)]
    if skip_ends and len(layers) > 2:
        layers = layers[1:-1]
    if not layers:
        raise ConvslimError("the model has no conv or linear layer to quantize")
    return layers


def quantize_weights(model, layers, make):
    """Register the weight quantizer `make(name, module)` on every layer of `layers`."""
    for name, mod in layers:
        if parametrize.is_parametrized(mod, "weight"):
            raise ConvslimError(f"layer {name} is already quantized")
        parametrize.register_parametrization(mod, "weight", make(name, mod).to(device_of(mod)))
    return model


def quantize_inputs(model, layers, spec, *, method="minmax", percentile=99.99):
    for _, mod in layers:
        mod.act_quant = ActQuant(spec, method, percentile).to(device_of(mod))
        mod.register_forward_pre_hook(_quantize_input)
    return model


def act_quantizers(model):
    return [m for m in model.modules() if isinstance(m, ActQuant)]


@torch.no_grad()
def calibrate(model, images, *, batch_size=64, progress=False):
    """Run calibration images through the model and fix every ActQuant's range (PTQ)."""
    aqs = act_quantizers(model)
    if not aqs:
        return model
    if len(images) == 0:
        raise ConvslimError("calibration needs at least one image, got 0")
    was_training = model.training
    model.eval()
    for aq in aqs:
        aq.observer = RangeObserver(aq.method, bits=aq.spec.bits, percentile=aq.percentile)
    passes = ["observe"] + (["hist"] if aqs[0].observer.needs_histogram else [])
    device = device_of(model)
    for mode in passes:
        for aq in aqs:
            aq.mode = mode
        for i in tqdm(range(0, len(images), batch_size), desc=f"calibrate ({mode})", leave=False,
                      disable=not progress):
            model(images[i:i + batch_size].to(device))
    for aq in aqs:
        lo, hi = aq.observer.range()
        aq.lo.fill_(lo)
        aq.hi.fill_(hi)
        aq.mode, aq.observer = "quant", None
    return model.train(was_training)


def simulate(model, *, wbits=8, abits=8, scheme="symmetric", granularity="channel", reduce_range=False,
             calibration="minmax", percentile=99.99, images=None, layers=None):
    """A copy of `model` with fake-quantized weights (and inputs, when `abits`), calibrated on `images`.

    Weights use `scheme` and `granularity`; activations are asymmetric per tensor (the seeds'
    advice: they are dynamic, and post-ReLU maps are one-sided). `abits=None` keeps activations float.
    """
    from .quantizers import weight_spec

    wspec = weight_spec(wbits, scheme=scheme, granularity=granularity, reduce_range=reduce_range)
    sim = copy.deepcopy(model).cpu().eval()
    chosen = layers_of(sim) if layers is None else [(n, sim.get_submodule(n)) for n in layers]
    quantize_weights(sim, chosen, lambda n, m: UniformWeight(wspec))
    if abits is not None:
        if images is None:
            raise ConvslimError("activation quantization needs calibration images")
        quantize_inputs(sim, chosen, QuantSpec(abits, symmetric=False), method=calibration, percentile=percentile)
        calibrate(sim, images)
    return sim


def quantized_layers(model):
    """(name, module, weight quantizer) for every layer with a quantized weight."""
    out = []
    for name, mod in model.named_modules():
        if parametrize.is_parametrized(mod, "weight"):
            out.append((name, mod, mod.parametrizations.weight[0]))
    return out


@torch.no_grad()
def encode(model):
    """{layer: (codes, codebook)}: integer codes per weight and the value of each code per channel."""
    out = {}
    for name, mod, wq in quantized_layers(model):
        codes, codebook = wq.encode(mod.parametrizations.weight.original)
        out[name] = (codes, codebook)
    return out


def lookup(codes, codebook):
    """Weights from codes: codebook row per output channel (or one row for the whole tensor)."""
    if codebook.shape[0] == 1:
        return codebook[0][codes]
    rows = torch.arange(codes.shape[0], device=codes.device).reshape(-1, *([1] * (codes.ndim - 1))).expand_as(codes)
    return codebook[rows, codes]


@torch.no_grad()
def strip(model):
    """Bake quantized weights in (exactly codebook[codes]) and remove weight and input quantizers."""
    coded = encode(model)
    for name, mod, _ in quantized_layers(model):
        parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
        codes, codebook = coded[name]
        mod.weight.data = lookup(codes, codebook).to(mod.weight.dtype).reshape(mod.weight.shape).contiguous()
    return without_input_quantizers(model)


def without_input_quantizers(model):
    """Remove input transforms (activation quantizers, XNOR hooks) from a model, in place."""
    for mod in model.modules():
        for hooks in (mod._forward_pre_hooks, mod._forward_hooks):
            for key, hook in list(hooks.items()):
                if getattr(hook, "convslim_quant", False):
                    del hooks[key]
        mod._modules.pop("act_quant", None)
    return model
