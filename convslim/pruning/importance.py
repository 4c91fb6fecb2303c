"""Channel importance by weight permutation (seed 003, chapter 3; DESIGN.md 1.1).

For output channel i of a conv (or linear) layer, D_i is the mean over images of the squared
change of that channel's output when its kernel is destroyed. Output channel i depends only on
kernel i, so destroying every kernel at once and running the layer once gives all D_i together;
`loop_importance` is the thesis's per-channel loop, kept only as a test oracle.

Estimators for `shuffle`: `sample` (R random permutations, R=1 is the thesis) and `expected`
(the exact expectation over all permutations, no randomness; DESIGN.md gives the formula).
Measures: `conv` (the raw conv output, the thesis) or `bn` (what the next layer sees through the
following BatchNorm: D_i * (gamma_i / sigma_i)^2).
"""
import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConvslimError
from ..hooks import run_with_hooks

PERMS = ("shuffle", "zero", "reinit")
ESTIMATORS = ("expected", "sample")
MEASURES = ("conv", "bn")


def as_conv(module):
    """Conv hyper-parameters and a 4-D weight for a Conv2d, or for a Linear seen as a 1x1 conv."""
    if isinstance(module, nn.Conv2d):
        return module.weight, dict(stride=module.stride, padding=module.padding,
                                   dilation=module.dilation, groups=module.groups)
    if isinstance(module, nn.Linear):
        return module.weight[:, :, None, None], dict(stride=1, padding=0, dilation=1, groups=1)
    raise ConvslimError(f"permutation importance needs a Conv2d or Linear layer, got {type(module).__name__}")


def as_image(module, x):
    return x[:, :, None, None] if isinstance(module, nn.Linear) else x


def layer_generator(seed, layer):
    """A generator per layer, so a layer's permutations do not depend on which layers are scored."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(layer.encode()))


def destroyed_weights(weight, perm, generator):
    """The layer's kernels destroyed all at once: each row shuffled, zeroed, or freshly drawn."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    if perm == "zero":
        return torch.zeros_like(weight)
    if perm == "reinit":  # PyTorch's default conv/linear init: kaiming_uniform(a=sqrt(5))
        bound = 1.0 / math.sqrt(flat.shape[1])
        fresh = torch.rand(flat.shape, generator=generator) * 2 * bound - bound
        return fresh.to(weight).reshape(weight.shape)
    if perm == "shuffle":  # an independent uniform permutation per kernel
        order = torch.rand(flat.shape, generator=generator).argsort(dim=1).to(weight.device)
        return flat.gather(1, order).reshape(weight.shape)
    raise ConvslimError(f"unknown permutation {perm!r}; choose one of {', '.join(PERMS)}")


def sampled_change(x, weight, destroyed, conv):
    """Sum over images and pixels of (y_i - y_i')^2 per channel, for one destroyed weight."""
    delta = F.conv2d(x, weight - destroyed, None, **conv)
    return delta.pow(2).sum(dim=(0, 2, 3))


def expected_change(x, weight, conv):
    """Closed-form E over all permutations of each kernel of sum (y_i - y_i')^2 (DESIGN.md 1.1)."""
    out_c = weight.shape[0]
    groups = conv["groups"]
    flat = weight.reshape(out_c, -1)
    n = flat.shape[1]
    if n == 1:  # a single weight has only the identity permutation
        return torch.zeros(out_c, device=weight.device, dtype=weight.dtype)
    kbar = flat.mean(1)
    s2 = flat.var(1, unbiased=False)
    ones = torch.ones(groups, weight.shape[1], *weight.shape[2:], device=x.device, dtype=x.dtype)
    y = F.conv2d(x, weight, None, **conv)
    s = F.conv2d(x, ones, None, **conv)
    q = F.conv2d(x * x, ones, None, **conv)
    group_of = torch.arange(out_c, device=x.device) // (out_c // groups)
    s, q = s[:, group_of], q[:, group_of]
    mean_term = (y - kbar[None, :, None, None] * s).pow(2)
    var_term = s2[None, :, None, None] * (n * q - s * s) / (n - 1)
    return (mean_term + var_term).sum(dim=(0, 2, 3))


def following_bn(graph, module):
    """The BatchNorm that directly consumes this layer's output, if any (via the traced graph)."""
    node = graph.module2node.get(module)
    for out in (node.outputs if node else []):
        if isinstance(out.module, nn.modules.batchnorm._BatchNorm):
            return out.module
    return None


def bn_factor(bn):
    """(gamma / sigma)^2 per channel: how a BatchNorm scales a change in its input, squared."""
    sigma2 = bn.running_var.detach() + bn.eps
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(sigma2)
    return gamma.pow(2) / sigma2


def permutation_importance(model, layers, inputs, *, perm="shuffle", estimator="expected", samples=1,
                           measure="conv", graph=None, seed=0):
    """D_i for every output channel of each named layer, from one forward per layer and batch.

    `inputs` is an iterable of input batches (real images, or random ones for the thesis's
    `random` variant); the layers see the feature maps the unpruned model produces from them.
    Returns {layer name: tensor of D_i}, averaged over images.
    """
    if perm not in PERMS:
        raise ConvslimError(f"unknown permutation {perm!r}; choose one of {', '.join(PERMS)}")
    if estimator not in ESTIMATORS:
        raise ConvslimError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if measure not in MEASURES:
        raise ConvslimError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
    if samples < 1:
        raise ConvslimError(f"samples must be at least 1, got {samples}")
    modules = dict(model.named_modules())
    plans, totals = {}, {}
    closed_form = perm == "shuffle" and estimator == "expected"
    for name in layers:
        weight, conv = as_conv(modules[name])
        gen = layer_generator(seed, name)
        draws = [] if closed_form else [destroyed_weights(weight, perm, gen)
                                        for _ in range(samples if perm != "zero" else 1)]
        plans[name] = (weight.detach(), conv, draws)
        totals[name] = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)

    def hook(name):
        def accumulate(mod, args, output):
            weight, conv, draws = plans[name]
            x = as_image(mod, args[0].detach())
            if closed_form:
                d = expected_change(x, weight, conv)
            else:
                d = sum(sampled_change(x, weight, w, conv) for w in draws) / len(draws)
            totals[name] += d.double()
        return accumulate

    images = run_with_hooks(model, {name: hook(name) for name in layers}, inputs)
    if images == 0:
        raise ConvslimError("no calibration images: importance needs at least one batch")
    scores = {name: (t / images).float().cpu() for name, t in totals.items()}
    if measure == "bn":
        if graph is None:
            raise ConvslimError("measure=bn needs the model's dependency graph")
        for name in layers:
            bn = following_bn(graph, modules[name])
            if bn is not None:
                scores[name] = scores[name] * bn_factor(bn).cpu().float()
    return scores


def loop_importance(model, layer, inputs, *, perm="shuffle", seed=0):
    """The thesis's loop: destroy one kernel, rerun the layer, measure; for tests only."""
    module = dict(model.named_modules())[layer]
    weight, conv = as_conv(module)
    destroyed = destroyed_weights(weight, perm, layer_generator(seed, layer))
    captured = []
    images = run_with_hooks(model, {layer: lambda m, a, o: captured.append(as_image(m, a[0].detach()))}, inputs)
    d = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    with torch.no_grad():
        for i in range(weight.shape[0]):
            changed = weight.detach().clone()
            changed[i] = destroyed[i]
            for x in captured:
                y = F.conv2d(x, weight, None, **conv)[:, i]
                y_changed = F.conv2d(x, changed, None, **conv)[:, i]
                d[i] += (y - y_changed).double().pow(2).sum()
    return (d / images).float().cpu()


def contributions(scores):
    """P_i = D_i / sum_j D_j within a layer (all zero stays all zero)."""
    total = scores.sum()
    return scores / total if total > 0 else torch.zeros_like(scores)
