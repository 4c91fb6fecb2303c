"""Compact modules: zoo networks, separable/Ghost conversion with predicted sizes, and the
command line of the families (distill, decompose, sparsify, convert, compare)."""
import pytest
import torch

import convslim
from convslim.cli import main
from convslim.convert import compare_layers, convert, ghost_params, separable_params, separable_ratio
from convslim.models import create


def small(name="digits_resnet"):
    return convslim.build_model(name, num_classes=10, in_channels=1, input_shape=[1, 8, 8]).eval()


@pytest.mark.parametrize("name", ["mobilenetv1", "shufflenetv1", "shufflenetv2", "squeezenet", "ghostnet", "xception"])
def test_compact_zoo_nets_run_on_digits(name):
    model = create(name, num_classes=10, in_channels=1, width=0.25).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_mobilenetv1_has_its_known_size():
    assert sum(p.numel() for p in create("mobilenetv1").parameters()) == pytest.approx(3.2e6, rel=0.02)


@pytest.mark.parametrize("to", ["separable", "ghost"])
def test_converted_model_runs_with_predicted_params(to, tmp_path):
    model = small()
    conv, rows = convert(model, to)
    done = [r for r in rows if r["apply"]]
    assert done and not any(r["stem"] for r in done)
    predict = separable_params if to == "separable" else ghost_params
    expected = sum(p.numel() for p in model.parameters()) + sum(
        predict(r["in"], r["out"], r["kernel"][0] * r["kernel"][1]) - r["params"] for r in done)
    assert sum(p.numel() for p in conv.parameters()) == expected
    x = torch.randn(2, 1, 8, 8)
    assert conv(x).shape == (2, 10)
    again = convslim.load(convslim.save(conv, tmp_path / "c.pt"))
    assert torch.equal(again(x), conv(x))


def test_compare_follows_the_seed_formula():
    model = convslim.build_model("resnet20", num_classes=10, input_shape=[3, 32, 32])
    rows = compare_layers(model)
    big = [r for r in rows if r["kernel"] == [3, 3] and r["in"] == r["out"] == 64]
    assert big and all(abs(r["separable_ratio"] - separable_ratio(64, 9)) < 0.01 for r in big)
    assert all(0.45 < r["ghost_ratio"] < 0.56 for r in big)


# --- command line ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "teacher.pt"
    torch.manual_seed(0)
    convslim.save(small(), path)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_commands(saved, tmp_path, capsys, device):
    code, out, _ = run(capsys, "compare", "--model", saved)
    assert code == 0 and "1/Co+1/k2" in out
    code, out, _ = run(capsys, "decompose", "--model", saved, "--method", "svd", "--energy", "0.6", "--device", device,
                       "--out", tmp_path / "d.pt", "--report", tmp_path / "rep")
    assert code == 0 and (tmp_path / "d.pt").exists() and (tmp_path / "rep" / "report.html").exists()
    code, out, _ = run(capsys, "sparsify", "--model", saved, "--sparsity", "0.9", "--device", device,
                       "--csr", tmp_path / "s.csr")
    assert code == 0 and "CSR" in out and (tmp_path / "s.csr").exists()
    code, out, _ = run(capsys, "convert", "--model", saved, "--data", "digits", "--to", "ghost", "--epochs", "0.05",
                       "--batch-size", "64", "--device", device, "--quiet", "--out", tmp_path / "g.pt")
    assert code == 0 and convslim.load(tmp_path / "g.pt") is not None
    code, out, _ = run(capsys, "distill", "--teacher", saved, "--student", "digitsnet", "--width", "0.25",
                       "--data", "digits", "--loss", "kd,hint,attention", "--epochs", "0.05", "--batch-size", "64",
                       "--device", device, "--quiet", "--out", tmp_path / "s.pt", "--json", tmp_path / "s.json")
    assert code == 0 and "student" in out and (tmp_path / "s.json").exists()


def bad_cases(tmp, saved):
    out = tmp / "o.pt"
    return [
        (["distill", "--teacher", "digits_resnet", "--student", "digitsnet", "--data", "digits", "--out", out], "teacher"),
        (["distill", "--teacher", saved, "--student", "digitsnet", "--data", "digits", "--loss", "kd,dark", "--out", out], "dark"),
        (["distill", "--teacher", saved, "--student", "digitsnet", "--data", "digits", "--loss", "hint",
          "--hint-layers", "body", "--out", out], "STUDENT_LAYER:TEACHER_LAYER"),
        (["distill", "--teacher", saved, "--student", "resnet20", "--data", "digits", "--out", saved], "also an input"),
        (["decompose", "--model", tmp / "missing.pt", "--out", out], "not found"),
        (["decompose", "--model", saved, "--energy", "0", "--out", out], "energy"),
        (["decompose", "--model", saved, "--layers", "nope", "--out", out], "nope"),
        (["decompose", "--model", saved, "--auto", "--out", out], "--data"),
        (["sparsify", "--model", saved, "--sparsity", "1.5", "--out", out], "sparsity"),
        (["sparsify", "--model", saved, "--sparsity", "0.5"], "--csr"),
        (["sparsify", "--model", saved, "--csr", tmp / "nofolder" / "x.csr"], "does not exist"),
        (["convert", "--model", "digitsnet", "--data", "digits", "--to", "ghost", "--out", out], ".pt"),
        (["convert", "--model", saved, "--data", "digits", "--to", "ghost", "--ratio", "1", "--out", out], "ratio"),
    ]


def test_bad_input_gives_one_clear_line(saved, tmp_path, capsys):
    for argv, needle in bad_cases(tmp_path, saved):
        code, out, err = run(capsys, *argv)
        assert code == 2, argv
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("convslim: error:") and needle in lines[0], (argv, err)
        assert not (tmp_path / "o.pt").exists()
