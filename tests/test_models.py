"""Model zoo: registry, shapes, well-known sizes, and torch-pruning compatibility."""
from __future__ import annotations


import pytest
import torch
import torch.nn as nn

from convslim.errors import ConvslimError
from convslim.models import available, create

SMALL = {"digitsnet", "digits_resnet"}
NEEDS_32 = {"vgg11", "vgg13", "vgg16", "vgg19"}  # five 2x2 max-pools
W = 0.25


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is fastest and keeps the file fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, shape=(1, 3, 32, 32)) -> int:
    """Multiply-accumulates of one image: Conv2d out_elems*cin/groups*kh*kw, Linear in*out."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.randn(*shape))
    for h in handles:
        h.remove()
    return total


def test_registry_lists_every_family():
    names = available()
    assert names == sorted(names)
    for n in ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18", "resnet34", "resnet50",
              "vgg11", "vgg13", "vgg16", "vgg19", "googlenet", "densenet121", "mobilenetv2", "alexnet",
              "digitsnet", "digits_resnet"]:
        assert n in names


@pytest.mark.parametrize("name", available())
def test_forward_shape(name):
    torch.manual_seed(0)
    model = create(name, num_classes=7, width=W).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
        if name not in NEEDS_32:
            assert model(torch.randn(2, 3, 8, 8)).shape == (2, 7)
    assert isinstance(list(model.modules())[-1], nn.Linear)
    assert model.classifier is list(model.modules())[-1]
    if name in SMALL:
        m1 = create(name, num_classes=10, in_channels=1, width=1.0).eval()
        with torch.no_grad():
            assert m1(torch.randn(2, 1, 8, 8)).shape == (2, 10)
            assert m1(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", available())
def test_width_shrinks(name):
    assert n_params(create(name, width=0.5)) < n_params(create(name, width=1.0))


@pytest.mark.parametrize("name, params, p_tol, macs, m_tol", [
    ("resnet20", 0.27e6, 0.03, 41e6, 0.05),
    ("resnet56", 0.85e6, 0.03, 125e6, 0.05),
    ("vgg16", 15e6, 0.05, 314e6, 0.05),
])
def test_well_known_sizes(name, params, p_tol, macs, m_tol):
    model = create(name)
    assert abs(n_params(model) - params) <= p_tol * params, n_params(model)
    assert abs(count_macs(model) - macs) <= m_tol * macs, count_macs(model)


def test_unknown_name():
    with pytest.raises(ConvslimError, match="no_such_net") as e:
        create("no_such_net")
    assert "resnet56" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs", [dict(width=0), dict(width=-0.5), dict(width=float("nan")),
                                    dict(num_classes=0), dict(in_channels=0)])
def test_bad_arguments(kwargs):
    with pytest.raises(ConvslimError, match=next(iter(kwargs))):
        create("resnet20", **kwargs)


def test_init():
    model = create("resnet20")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)


# torch-pruning's handling of every zoo model is tested through convslim's pruner in test_pruning.py


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_models_learn_digits(name):
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(y))
    tr, te = perm[:1400], perm[1400:]
    model = create(name, num_classes=10, in_channels=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(10):
        model.train()
        for idx in tr[torch.randperm(len(tr))].split(100):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(X[te]).argmax(1) == y[te]).float().mean().item()
    assert acc > 0.9, acc
