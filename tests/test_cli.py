"""The command line: the documented commands work, and bad input gives one line and exit 2."""
import json
import subprocess
import sys

import pytest
import torch

from convslim.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "digits.pt"
    assert main(["train", "--model", "digitsnet", "--data", "digits", "--epochs", "3", "--lr", "0.05",
                 "--batch-size", "64", "--quiet", "--out", str(path)]) == 0
    return path


def test_train_eval_profile_export(trained, tmp_path, capsys):
    code, out, _ = run(capsys, "eval", "--model", str(trained), "--data", "digits")
    assert code == 0 and "top-1" in out and "top-5" in out
    top1 = float(out.split("top-1 ")[1].split("%")[0])
    assert top1 > 80
    code, out, _ = run(capsys, "profile", "--model", str(trained), "--data", "digits", "--batches", "1,8",
                       "--repeats", "3", "--json", str(tmp_path / "p.json"))
    assert code == 0 and "MACs" in out and "ort_b8" in out
    prof = json.loads((tmp_path / "p.json").read_text())
    assert prof["totals"]["params"] > 0 and prof["accuracy"]["top1"] == pytest.approx(top1, abs=0.01)
    code, out, _ = run(capsys, "export", "--model", str(trained), "--out", str(tmp_path / "m.onnx"))
    assert code == 0 and (tmp_path / "m.onnx").exists()


def test_zoo_model_profile_without_data(capsys):
    code, out, _ = run(capsys, "profile", "--model", "resnet20", "--width", "0.25", "--batches", "1",
                       "--repeats", "2", "--no-onnx", "--compare-separable")
    assert code == 0 and "total:" in out and "separable" in out


def bad_cases(tmp_path, trained):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    sd = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(3)}, sd)
    empty = tmp_path / "empty"
    empty.mkdir()
    return [
        (["eval", "--model", str(tmp_path / "nope.pt"), "--data", "digits"], "not found"),
        (["train", "--model", "resnet9000", "--data", "digits", "--out", str(tmp_path / "o.pt")], "resnet9000"),
        (["eval", "--model", str(junk), "--data", "digits"], "not a checkpoint"),
        (["train", "--model", "digitsnet", "--weights", str(sd), "--data", "digits", "--out", str(tmp_path / "o.pt")], "do not fit"),
        (["eval", "--model", str(trained), "--data", f"imagefolder:{empty}"], "image"),
        (["train", "--model", "digitsnet", "--data", "digits", "--epochs", "-1", "--out", str(tmp_path / "o.pt")], "epochs"),
        (["train", "--model", str(trained), "--data", "digits", "--epochs", "1", "--out", str(trained)], "also an input"),
        (["train", "--model", "digitsnet", "--data", "digits", "--out", str(tmp_path / "no" / "dir" / "o.pt")], "does not exist"),
    ]


def test_bad_input_gives_one_line_and_writes_nothing(trained, tmp_path, capsys):
    stamp = trained.read_bytes()
    for argv, message in bad_cases(tmp_path, trained):
        code, out, err = run(capsys, *argv)
        assert code == 2, argv
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (argv, err)
        assert not (tmp_path / "o.pt").exists()
    assert trained.read_bytes() == stamp


def test_wrong_input_size_is_named(tmp_path, capsys):
    path = tmp_path / "r.pt"
    assert main(["train", "--model", "digitsnet", "--data", "digits", "--epochs", "0", "--quiet", "--out", str(path)]) == 0
    payload = torch.load(path, weights_only=True)
    payload["input_shape"] = [1, 16, 16]
    torch.save(payload, path)
    code, _, err = run(capsys, "eval", "--model", str(path), "--data", "digits")
    assert code == 2 and "wrong input size" in err


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "convslim", "eval", "--model", str(tmp_path / "x.pt"),
                           "--data", "digits"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
