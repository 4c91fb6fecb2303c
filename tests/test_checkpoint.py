"""A saved model rebuilds from its record alone, also after channels were removed."""
import textwrap

import pytest
import torch

import convslim
from convslim.checkpoint import record_of
from convslim.errors import ConvslimError
from convslim.pruning import remove_channels


def small(model="digits_resnet"):
    return convslim.build_model(model, num_classes=10, in_channels=1, input_shape=[1, 8, 8])


def test_round_trip_restores_outputs(tmp_path):
    model = small().eval()
    x = torch.randn(3, 1, 8, 8)
    convslim.save(model, tmp_path / "m.pt")
    again = convslim.load(tmp_path / "m.pt")
    assert torch.equal(model(x), again(x))
    assert record_of(again).arch["model"] == "digits_resnet"


def test_pruned_model_reloads_smaller_and_identical(tmp_path):
    model = small().eval()
    before = sum(p.numel() for p in model.parameters())
    first_conv = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    history = remove_channels(model, {first_conv: [0, 2]}, torch.randn(1, 1, 8, 8))
    record_of(model).history += history
    after = sum(p.numel() for p in model.parameters())
    assert after < before
    path = convslim.save(model, tmp_path / "pruned.pt")
    # the file is plain data: weights_only loading accepts it
    payload = torch.load(path, weights_only=True)
    assert payload["history"] == history
    again = convslim.load(path)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x), again(x))
    assert sum(p.numel() for p in again.parameters()) == after


def test_removing_every_channel_is_refused():
    model = small()
    conv = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    n = dict(model.named_modules())[conv].out_channels
    with pytest.raises(ConvslimError, match="all"):
        remove_channels(model, {conv: list(range(n))}, torch.randn(1, 1, 8, 8))


def test_user_factory_file_round_trip(tmp_path, monkeypatch):
    src = tmp_path / "mynet.py"
    src.write_text(textwrap.dedent("""
        from torch import nn
        def make(num_classes=10, in_channels=3):
            return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    """))
    model = convslim.build_model(f"{src}:make", num_classes=4, in_channels=1, input_shape=[1, 8, 8])
    convslim.save(model, tmp_path / "mine.pt")
    monkeypatch.chdir("/")
    with pytest.raises(ConvslimError, match="never chooses which code runs"):
        convslim.load(tmp_path / "mine.pt")
    again = convslim.load(tmp_path / "mine.pt", trust_code=True)
    assert again(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    # the CLI's explicit way: the user names the code, the file gives the weights
    same = convslim.build_model(f"{src}:make", num_classes=4, in_channels=1, input_shape=[1, 8, 8],
                                weights=tmp_path / "mine.pt")
    for a, b in zip(again.state_dict().values(), same.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("spec", ["os:abort", "pdb:set_trace", "this:x", "convslim.cli:main"])
def test_a_model_file_never_chooses_code(tmp_path, spec, capsys):
    """A checkpoint naming any code outside the zoo is refused before anything is imported."""
    import sys

    from convslim.cli import main

    model = small()
    path = tmp_path / "evil.pt"
    convslim.save(model, path)
    payload = torch.load(path, weights_only=True)
    payload["arch"]["model"] = spec
    torch.save(payload, path)
    sys.modules.pop("this", None)
    with pytest.raises(ConvslimError, match="never chooses which code runs"):
        convslim.load(path)
    assert main(["eval", "--model", str(path), "--data", "digits"]) == 2
    assert "never chooses which code runs" in capsys.readouterr().err
    assert "this" not in sys.modules


def test_weights_file_loads_and_mismatch_is_named(tmp_path):
    model = small()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    again = convslim.build_model("digits_resnet", num_classes=10, in_channels=1, weights=tmp_path / "sd.pt")
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ConvslimError, match="do not fit"):
        convslim.build_model("digits_resnet", num_classes=7, in_channels=1, weights=tmp_path / "sd.pt")


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"hello, not a checkpoint", "not a checkpoint"),
    ("state_dict", "bare state dict"),
])
def test_bad_checkpoints_are_named(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if content == "state_dict":
        torch.save(small().state_dict(), path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConvslimError, match=message):
        convslim.load(path)


def test_save_refuses_to_overwrite_input(tmp_path):
    model = small()
    path = convslim.save(model, tmp_path / "m.pt")
    stamp = path.read_bytes()
    with pytest.raises(ConvslimError, match="also an input"):
        convslim.save(model, path, inputs=[path])
    assert path.read_bytes() == stamp
