"""Training learns, is repeatable from its seed, and evaluation counts correctly."""
import pytest
import torch

import convslim
from conftest import on
from convslim.errors import ConvslimError
from convslim.train import TrainConfig, cross_entropy


def digits_model(seed=0):
    torch.manual_seed(seed)
    return convslim.build_model("digitsnet", num_classes=10, in_channels=1, input_shape=[1, 8, 8])


def test_training_learns_digits(digits):
    model = digits_model()
    log = convslim.fit(model, digits, TrainConfig(epochs=4, lr=0.05, batch_size=64, progress=False))
    assert log["epochs"][-1]["val_acc"] > 85
    assert log["epochs"][-1]["train_loss"] < log["epochs"][0]["train_loss"]
    test = convslim.evaluate(model, digits, "test")
    assert test["top1"] > 85 and test["top5"] >= test["top1"]
    assert test["images"] == digits.test_y.numel()
    assert 0 <= log["data_overhead"] < 1


def test_same_seed_same_weights(digits, device, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)   # CUDA: the same conv kernels each run
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=64, progress=False, seed=3, device=device)
    a, b = digits_model(), digits_model()
    log = convslim.fit(a, digits, cfg, validate=False)
    convslim.fit(b, digits, cfg, validate=False)
    assert on(a, device) and on(b, device)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert 0 < log["epochs"][0]["train_acc"] <= 100 and log["epochs"][0]["train_loss"] > 0


def test_step_budget_is_respected(digits):
    log = convslim.fit(digits_model(), digits, TrainConfig(epochs=10, max_steps=3, progress=False), validate=False)
    assert log["steps"] == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": -1}, "non-negative"), ({"lr": 0}, "positive"), ({"schedule": "zigzag"}, "schedule"),
])
def test_bad_config_is_named(kwargs, message):
    with pytest.raises(ConvslimError, match=message):
        TrainConfig(**kwargs).check()


def test_bn_recalibration_restores_statistics(digits):
    model = digits_model()
    convslim.fit(model, digits, TrainConfig(epochs=2, lr=0.05, batch_size=64, progress=False), validate=False)
    ref = convslim.evaluate(model, digits, "val")["top1"]
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.add_(3.0)
    assert convslim.evaluate(model, digits, "val")["top1"] < ref - 10
    convslim.recalibrate_bn(model, digits, batches=10, batch_size=64)
    assert convslim.evaluate(model, digits, "val")["top1"] > ref - 3


def test_thin_strided_shortcut_trains_on_one_thread(digits):
    """A pruned shortcut (1x1, stride 2, 4 input channels) once crashed torch's one-thread
    channels_last backward; fit must fall back to the contiguous layout and train."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 8, 1, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        convslim.fit(model, digits, TrainConfig(epochs=5, lr=0.2, progress=False), validate=False)
    finally:
        torch.set_num_threads(threads)
    assert convslim.evaluate(model, digits, "test")["top1"] > 20   # chance is 10


def test_amp_trains_in_bf16_and_learns(digits, device):
    """--amp: forward and loss under bf16 autocast; the weights stay float32 and the model learns."""
    model = digits_model()
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=64, progress=False, seed=0, device=device, amp=True)
    log = convslim.fit(model, digits, cfg, validate=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert log["epochs"][-1]["train_acc"] > 60


def test_stopped_and_resumed_equals_straight_bit_for_bit(digits, tmp_path):
    """4 epochs straight == 2 epochs, a stop, then the same call again (resume), on CPU."""
    cfg = TrainConfig(epochs=4, lr=0.05, batch_size=64, progress=False, seed=1, device="cpu")
    straight = digits_model()
    convslim.fit(straight, digits, cfg, validate=False)

    resumed = digits_model()
    state = tmp_path / "state.pt"
    steps_per_epoch = len(digits.train_y) // 64
    calls = {"n": 0}
    plain = cross_entropy()

    def stop_in_epoch_three(model, x, y):
        calls["n"] += 1
        if calls["n"] == 2 * steps_per_epoch + 1:
            raise KeyboardInterrupt
        return plain(model, x, y)

    with pytest.raises(KeyboardInterrupt):
        convslim.fit(resumed, digits, cfg, validate=False, loss_fn=stop_in_epoch_three, resume=state)
    assert state.exists()
    fresh = digits_model()               # a new process: fresh weights, the state file brings them back
    log = convslim.fit(fresh, digits, cfg, validate=False, resume=state)
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3, 4]
    for a, b in zip(straight.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(convslim.ConvslimError, match="another run"):
        convslim.fit(digits_model(), digits, TrainConfig(epochs=4, lr=0.1, batch_size=64, progress=False,
                                                         seed=1, device="cpu"), resume=state)


def test_train_resume_command(tmp_path, capsys):
    from convslim.cli import main

    argv = ["train", "--model", "digitsnet", "--data", "digits", "--epochs", "2", "--quiet", "--resume",
            "--out", str(tmp_path / "m.pt")]
    assert main(argv) == 0 and (tmp_path / "m.pt.state.pt").exists()
    first = convslim.load(tmp_path / "m.pt").state_dict()
    assert main(argv) == 0
    assert "resuming from" in capsys.readouterr().err
    again = convslim.load(tmp_path / "m.pt").state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
