"""Permutation importance: the fast forms equal the thesis's loop, the closed form equals the
mean of sampled shuffles, and the BN measure is the conv measure scaled by (gamma/sigma)^2."""
import pytest
import torch
from torch import nn

import convslim
from convslim.pruning.importance import (expected_change, loop_importance, permutation_importance,
                                         sampled_change, destroyed_weights)
from convslim.graph import build_graph


def net(groups=1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=groups), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 10, 10, generator=g) for _ in range(n)]


@pytest.mark.parametrize("perm", ["zero", "reinit", "shuffle"])
@pytest.mark.parametrize("layer", ["0", "3", "8"])
def test_one_forward_per_layer_equals_the_per_channel_loop(perm, layer):
    model = net()
    # all layers scored together: each layer's permutations must not depend on the others
    fast = permutation_importance(model, ["0", "3", "8"], batches(), perm=perm, estimator="sample", measure="conv", seed=7)
    slow = loop_importance(model, layer, batches(), perm=perm, seed=7)
    assert torch.allclose(fast[layer], slow, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 6, 3, padding=1),
    nn.Conv2d(3, 6, 3, stride=2, padding=0),
    nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2),
    nn.Conv2d(6, 6, 3, padding=1, groups=6),          # depthwise
    nn.Conv2d(3, 6, (1, 3), padding=(0, 1)),
])
def test_closed_form_matches_mean_of_sampled_shuffles(conv):
    torch.manual_seed(0)
    x = torch.randn(3, conv.in_channels, 7, 7)
    w = conv.weight.detach()
    params = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    exact = expected_change(x, w, params)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sampled_change(x, w, destroyed_weights(w, "shuffle", gen), params) for _ in range(4000)])
    mean, sem = draws.mean(0), draws.std(0) / 4000 ** 0.5
    assert torch.all((mean - exact).abs() <= 4 * sem + 1e-6 * exact.abs())


def test_expected_estimator_is_deterministic_and_sample_is_not():
    model = net()
    a = permutation_importance(model, ["3"], batches(), estimator="expected", seed=1)["3"]
    b = permutation_importance(model, ["3"], batches(), estimator="expected", seed=2)["3"]
    assert torch.equal(a, b)
    c = permutation_importance(model, ["3"], batches(), estimator="sample", seed=1)["3"]
    d = permutation_importance(model, ["3"], batches(), estimator="sample", seed=2)["3"]
    assert not torch.equal(c, d)


def test_bn_measure_is_conv_measure_times_gamma_over_sigma_squared():
    model = net()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].running_var.uniform_(0.5, 3.0)
    graph = build_graph(model, torch.randn(1, 3, 10, 10))
    conv = permutation_importance(model, ["0"], batches(), measure="conv")["0"]
    bn = permutation_importance(model, ["0"], batches(), measure="bn", graph=graph)["0"]
    factor = model[1].weight.detach() ** 2 / (model[1].running_var + model[1].eps)
    assert torch.allclose(bn, conv * factor, rtol=1e-5)


def test_bad_options_are_named():
    with pytest.raises(convslim.ConvslimError, match="permutation"):
        permutation_importance(net(), ["0"], batches(), perm="scramble")
    with pytest.raises(convslim.ConvslimError, match="calibration"):
        permutation_importance(net(), ["0"], [])
