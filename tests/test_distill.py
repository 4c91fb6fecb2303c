"""Distillation losses: KD against a hand-computed case, hint adapters, attention transfer."""
import math

import pytest
import torch

import convslim
from conftest import on
from convslim.distill import (DistillConfig, Distiller, HintAdapter, attention_loss, attention_map, distill_fit,
                              hint_loss, kd_loss, stage_outputs)
from convslim.errors import ConvslimError
from convslim.train import TrainConfig


def small(name, width=1.0):
    return convslim.build_model(name, num_classes=10, in_channels=1, width=width, input_shape=[1, 8, 8])


def softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_kd_loss_hand_computed():
    s, t, T, alpha = [2.0, 0.0, -1.0], [0.5, 1.5, 0.0], 2.0, 0.7
    p, q = softmax([x / T for x in t]), softmax([x / T for x in s])
    kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    ce = -math.log(softmax(s)[0])
    expected = alpha * T * T * kl + (1 - alpha) * ce
    got = kd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([0]), temperature=T, alpha=alpha)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 8.0])
def test_kd_soft_part_scales_with_t_squared(T):
    torch.manual_seed(1)
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    y = torch.zeros(5, dtype=torch.long)
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / T, 1), torch.softmax(t / T, 1), reduction="batchmean")
    assert kd_loss(s, t, y, temperature=T, alpha=1.0).item() == pytest.approx(T * T * kl.item(), rel=1e-5)
    assert kd_loss(s, t, y, temperature=T, alpha=0.0).item() == pytest.approx(
        torch.nn.functional.cross_entropy(s, y).item(), rel=1e-6)


def test_hint_adapter_shapes_and_loss():
    adapter = HintAdapter(8, 16)
    s, t = torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)
    assert adapter(s).shape == (2, 16, 4, 4)
    assert adapter(s, (2, 2)).shape == (2, 16, 2, 2)
    assert adapter.conv.weight.shape == (16, 8, 1, 1)
    loss = hint_loss(s, t, adapter)
    loss.backward()
    assert loss.dim() == 0 and adapter.conv.weight.grad is not None


def test_attention_maps():
    f = torch.randn(3, 5, 4, 4)
    a = attention_map(f)
    assert a.shape == (3, 16) and torch.allclose(a.norm(dim=1), torch.ones(3))
    assert attention_loss(f, f).item() == pytest.approx(0.0, abs=1e-9)
    assert attention_loss(torch.randn(3, 7, 8, 8), f).item() > 0      # other channels and size


def test_distiller_pairs_stages_and_builds_adapter():
    student, teacher = small("digitsnet", 0.25), small("digits_resnet")
    stages = [n for n, _ in stage_outputs(teacher, [1, 8, 8])]
    assert len(stages) == 2 and stages[-1] == "body"
    d = Distiller(student, teacher, DistillConfig(losses=("kd", "hint", "attention")), [1, 8, 8])
    assert len(d.at_pairs) == 2
    assert d.adapters["hint"].conv.weight.shape[:2] == (32, 16)     # teacher 32 channels, student 16
    d.close()
    assert not any(m._forward_hooks for m in student.modules())


def test_distill_fit_trains_the_student(digits, device):
    student, teacher = small("digitsnet", 0.5), small("digits_resnet").eval()   # both start on the CPU
    before = [p.clone() for p in student.parameters()]
    log = distill_fit(student, teacher, digits, TrainConfig(epochs=1, max_steps=3, batch_size=64, progress=False,
                                                            device=device),
                      DistillConfig(losses=("kd", "hint", "attention")), validate=False)
    assert log["steps"] == 3
    assert on(student, device) and on(teacher, device)
    assert any(not torch.equal(a, b.cpu()) for a, b in zip(before, student.parameters()))
    assert not any(m._forward_hooks for m in list(student.modules()) + list(teacher.modules()))


@pytest.mark.parametrize("kwargs, match", [(dict(losses=("kd", "dark")), "dark"), (dict(temperature=0), "temperature"),
                                           (dict(alpha=2), "alpha")])
def test_bad_config(kwargs, match):
    with pytest.raises(ConvslimError, match=match):
        DistillConfig(**kwargs).check()
