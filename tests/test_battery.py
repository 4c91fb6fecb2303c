"""Bad and hostile input, table-driven, across every command: each case exits non-zero with at most
four lines and no traceback, writes no file, and leaves every input byte for byte as it was.
Then the signal cases: SIGTERM or SIGINT while working, and an interrupt during the save."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import convslim
from convslim.cli import main
from convslim.fileio import atomic_path

TUPLE_NET = """
from torch import nn
class Net(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, num_classes)
    def forward(self, x):
        f = self.body(x)
        return self.head(f), f
def make(num_classes=10, in_channels=1):
    return Net(num_classes, in_channels)
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The inputs every case may read: a trained model, its copy as teacher, bad files of each kind."""
    d = tmp_path_factory.mktemp("inputs")
    m = d / "m.pt"
    assert main(["train", "--model", "digitsnet", "--data", "digits", "--epochs", "1", "--quiet", "--out", str(m)]) == 0
    (d / "t.pt").write_bytes(m.read_bytes())
    (d / "junk.pt").write_text("not a checkpoint")
    (d / "junk.csz").write_text("not a coded model")
    (d / "notjson.json").write_text("{ this is not json")
    (d / "x.pt.state.pt").write_text("not a training state")
    (d / "r.json").write_text(json.dumps({"body.0": 0.5}))
    (d / "rbad.json").write_text(json.dumps({"no.such.layer": 0.5}))
    (d / "rrange.json").write_text(json.dumps({"body.0": 1.5}))
    torch.save({"w": torch.zeros(3)}, d / "sd.pt")
    evil = torch.load(m, weights_only=True)
    evil["arch"]["model"] = "os:abort"
    torch.save(evil, d / "evil.pt")
    (d / "tuple_net.py").write_text(TUPLE_NET)
    (d / "empty").mkdir()
    from PIL import Image
    (d / "oneclass" / "cat").mkdir(parents=True)
    for i in range(40):
        Image.new("RGB", (8, 8), (6 * i, 0, 0)).save(d / "oneclass" / "cat" / f"{i}.png")
    return d


def _case(*argv, msg=None):
    return pytest.param(list(argv), msg, id=" ".join(argv)[:70])


M, T, W = "{w}/m.pt", "{w}/t.pt", "{w}"
D = ("--data", "digits")
CASES = [
    # train
    _case("train", "--model", "digitsnet", *D, "--epochs", "-1", "--out", "o.pt", msg="--epochs"),
    _case("train", "--model", "digitsnet", *D, "--num-classes", "1", "--out", "o.pt", msg="--num-classes"),
    _case("train", "--model", "digitsnet", *D, "--num-classes", "0", "--out", "o.pt", msg="--num-classes"),
    _case("train", "--model", "digitsnet", *D, "--momentum", "-1", "--out", "o.pt", msg="--momentum"),
    _case("train", "--model", "digitsnet", *D, "--weight-decay", "-1", "--out", "o.pt", msg="--weight-decay"),
    _case("train", "--model", "digitsnet", *D, "--lr", "0", "--out", "o.pt", msg="--lr"),
    _case("train", "--model", "digitsnet", *D, "--batch-size", "0", "--out", "o.pt", msg="--batch-size"),
    _case("train", "--model", "digitsnet", *D, "--label-smoothing", "1.5", "--out", "o.pt", msg="--label-smoothing"),
    _case("train", "--model", "digitsnet", *D, "--width", "0", "--out", "o.pt", msg="--width"),
    _case("train", "--model", "digitsnet", *D, "--width", "nan", "--out", "o.pt", msg="--width"),
    _case("train", "--model", "digitsnet", *D, "--val-fraction", "1", "--out", "o.pt", msg="--val-fraction"),
    _case("train", "--model", "digitsnet", *D, "--seed", "-1", "--out", "o.pt", msg="--seed"),
    _case("train", "--model", "resnet9000", *D, "--out", "o.pt", msg="resnet9000"),
    _case("train", "--model", M, *D, "--out", M, msg="also an input"),
    _case("train", "--model", "digitsnet", *D, "--out", "o.pt", "--json", "o.pt", msg="two outputs"),
    _case("train", "--model", "digitsnet", *D, "--out", "/proc/o.pt", msg="cannot write"),
    _case("train", "--model", "digitsnet", *D, "--out", "no/dir/o.pt", msg="does not exist"),
    _case("train", "--model", "digitsnet", *D, "--out", W, msg="is a folder"),
    _case("train", "--model", "digitsnet", "--data", "nosuch:thing", "--out", "o.pt"),
    _case("train", "--model", "digitsnet", "--data", "cifar10:/no/such/folder", "--out", "o.pt", msg="not found"),
    _case("train", "--model", "digitsnet", "--data", "{w}/empty", "--out", "o.pt"),
    _case("train", "--model", "digitsnet", "--data", "imagefolder:{w}/oneclass", "--out", "o.pt", msg="1 class"),
    _case("train", "--model", "digitsnet", *D, "--resume", "--out", "{w}/x.pt", msg="state"),
    _case("train", "--model", "{w}/tuple_net.py:make", *D, "--out", "o.pt", msg="--output"),
    _case("train", "--model", "{w}/tuple_net.py:make", *D, "--output", "5", "--out", "o.pt", msg="output 5"),
    _case("train", "--model", "digitsnet", *D, "--weights", "{w}/sd.pt", "--out", "o.pt", msg="do not fit"),
    # eval
    _case("eval", "--model", "{w}/nope.pt", *D, msg="not found"),
    _case("eval", "--model", "{w}/junk.pt", *D, msg="not a checkpoint"),
    _case("eval", "--model", "{w}/sd.pt", *D, msg="bare state dict"),
    _case("eval", "--model", "{w}/junk.csz", *D, msg="decompress"),
    _case("eval", "--model", "{w}/evil.pt", *D, msg="never chooses which code runs"),
    _case("eval", "--model", M, "--weights", "{w}/sd.pt", *D, msg="--weights"),
    _case("eval", "--model", M, "--split", "bogus", *D, msg="--split"),
    _case("eval", "--model", M, "--batch-size", "0", *D, msg="--batch-size"),
    _case("eval", "--model", M, "--data", "imagefolder:{w}/empty", msg="image"),
    _case("eval", "--model", "digitsnet", msg="--data"),
    # profile
    _case("profile", "--model", M, "--batches", "0", msg="batch"),
    _case("profile", "--model", M, "--batches", "a,b", msg="batch"),
    _case("profile", "--model", M, "--repeats", "0", msg="--repeats"),
    _case("profile", "--model", M, "--threads", "0", msg="--threads"),
    _case("profile", "--model", "resnet20", "--input-size", "0", msg="--input-size"),
    _case("profile", "--model", M, "--json", M, msg="also an input"),
    # export
    _case("export", "--model", M, "--opset", "5", "--out", "o.onnx", msg="--opset"),
    _case("export", "--model", M, "--opset", "99", "--out", "o.onnx", msg="--opset"),
    _case("export", "--model", M, "--out", M, msg="also an input"),
    _case("export", "--model", M, "--out", "/proc/o.onnx", msg="cannot write"),
    # prune
    _case("prune", "--model", M, *D, "--out", "o.pt", msg="--cr"),
    _case("prune", "--model", M, *D, "--cr", "1.5", "--out", "o.pt", msg="--cr"),
    _case("prune", "--model", M, *D, "--ratio", "-0.1", "--out", "o.pt", msg="--ratio"),
    _case("prune", "--model", M, *D, "--ratios", "{w}/none.json", "--out", "o.pt", msg="not found"),
    _case("prune", "--model", M, *D, "--ratios", "{w}/notjson.json", "--out", "o.pt", msg="not JSON"),
    _case("prune", "--model", M, *D, "--ratios", "{w}/rbad.json", "--out", "o.pt", msg="no.such.layer"),
    _case("prune", "--model", M, *D, "--ratios", "{w}/rrange.json", "--out", "o.pt", msg="[0, 1)"),
    _case("prune", "--model", M, *D, "--ratios", "{w}/r.json", "--out", "{w}/r.json", msg="also an input"),
    _case("prune", "--model", M, *D, "--cr", "0.5", "--teacher", T, "--out", T, msg="also an input"),
    _case("prune", "--model", M, *D, "--cr", "0.5", "--multiple", "0", "--out", "o.pt", msg="--multiple"),
    _case("prune", "--model", M, *D, "--cr", "0.5", "--multiple", "-4", "--out", "o.pt", msg="--multiple"),
    _case("prune", "--model", M, *D, "--cr", "0.5", "--samples", "0", "--out", "o.pt", msg="--samples"),
    _case("prune", "--model", M, *D, "--cr", "0.5", "--calib-batches", "0", "--out", "o.pt", msg="--calib-batches"),
    _case("prune", "--model", M, *D, "--cr", "0.5", "--criterion", "bogus", "--out", "o.pt", msg="--criterion"),
    _case("prune", "--model", M, *D, "--cr", "0.5", "--out", "o.pt", "--json", "o.pt", msg="two outputs"),
    _case("prune", "--model", M, *D, "--cr", "0.5", "--teacher", "resnet20", "--out", "o.pt", msg="--teacher"),
    _case("prune", "--model", M, *D, "--cr", "0.5", "--ignore", "no.such.*", "--out", "o.pt", msg="matches no layer"),
    # auto
    _case("auto", "--model", M, *D, "--max-acc-loss", "-1", "--out", "o.pt", msg="max-acc-loss"),
    _case("auto", "--model", M, *D, "--min-interval", "0", "--out", "o.pt", msg="min-interval"),
    _case("auto", "--model", M, *D, "--out", "o.pt", "--log", "o.pt", msg="two outputs"),
    _case("auto", "--model", M, *D, "--probe-epochs", "-1", "--out", "o.pt", msg="--probe-epochs"),
    _case("auto", "--model", M, *D, "--out", "o.pt", "--log", "{w}/notjson.json", msg="not a search log"),
    _case("auto", "--model", M, *D, "--out", M, msg="also an input"),
    _case("auto", "--model", M, *D, "--target-flops", "0", "--out", "o.pt", msg="--target-flops"),
    _case("auto", "--model", M, *D, "--target-flops", "lots", "--out", "o.pt", msg="--target-flops"),
    _case("auto", "--model", M, *D, "--target-flops", "0.5", "--target-params", "0.5", "--out", "o.pt",
          msg="not allowed with"),
    _case("auto", "--model", M, *D, "--target-flops", "10", "--out", "o.pt", msg="no pruned model"),
    _case("auto", "--model", M, *D, "--search", "bogus", "--out", "o.pt", msg="--search"),
    _case("auto", "--model", M, *D, "--verify-epochs", "0", "--out", "o.pt", msg="--verify-epochs"),
    # report
    _case("report", "--model", M, *D, "--out", "{w}/junk.pt", msg="not a folder"),
    _case("report", "--model", M, *D, "--summary", "{w}/notjson.json", "--out", "rep", msg="not JSON"),
    # distill
    _case("distill", "--teacher", "resnet20", "--student", "digitsnet", *D, "--out", "o.pt", msg="--teacher"),
    _case("distill", "--teacher", M, "--student", "digitsnet", *D, "--temperature", "0", "--out", "o.pt",
          msg="--temperature"),
    _case("distill", "--teacher", M, "--student", "digitsnet", *D, "--alpha", "2", "--out", "o.pt", msg="--alpha"),
    _case("distill", "--teacher", M, "--student", "digitsnet", *D, "--out", M, msg="also an input"),
    _case("distill", "--teacher", M, "--student", "digitsnet", *D, "--loss", "bogus", "--out", "o.pt", msg="bogus"),
    # decompose
    _case("decompose", "--model", M, "--energy", "0", "--out", "o.pt", msg="--energy"),
    _case("decompose", "--model", M, "--energy", "1.5", "--out", "o.pt", msg="--energy"),
    _case("decompose", "--model", M, "--auto", "--out", "o.pt", msg="--data"),
    _case("decompose", "--model", M, "--method", "bogus", "--out", "o.pt", msg="--method"),
    _case("decompose", "--model", M, "--layers", "no.such", "--out", "o.pt", msg="no.such"),
    # sparsify
    _case("sparsify", "--model", M, *D, msg="--out"),
    _case("sparsify", "--model", M, *D, "--sparsity", "1", "--out", "o.pt", msg="--sparsity"),
    _case("sparsify", "--model", M, *D, "--out", "o.pt", "--csr", "o.pt", msg="two outputs"),
    _case("sparsify", "--model", M, *D, "--steps", "0", "--out", "o.pt", msg="--steps"),
    # convert, compare
    _case("convert", "--model", "resnet20", *D, "--to", "ghost", "--out", "o.pt", msg=".pt"),
    _case("convert", "--model", M, *D, "--to", "bogus", "--out", "o.pt", msg="--to"),
    _case("compare", "--model", M, "--ratio", "1", msg="--ratio"),
    # quantize, compress, decompress
    _case("quantize", "--model", M, *D, "--bits", "0", "--out", "o.csz", msg="--bits"),
    _case("quantize", "--model", M, *D, "--latency-batch", "1,x", "--out", "o.onnx", msg="--latency-batch"),
    _case("quantize", "--model", M, *D, "--bits", "17", "--out", "o.csz", msg="--bits"),
    _case("quantize", "--model", M, *D, "--method", "ptq", "--out", "o.csz", msg=".onnx"),
    _case("quantize", "--model", M, *D, "--method", "cluster", "--clusters", "1", "--out", "o.csz", msg="--clusters"),
    _case("quantize", "--model", M, *D, "--calibration", "bogus", "--out", "o.onnx", msg="bogus"),
    _case("quantize", "--model", M, *D, "--calibration", "percentile", "--percentile", "0", "--out", "o.onnx",
          msg="--percentile"),
    _case("quantize", "--model", M, *D, "--method", "qat", "--teacher", "resnet20", "--out", "o.onnx", msg="--teacher"),
    _case("quantize", "--model", M, *D, "--out", M, msg="also an input"),
    _case("compress", "--model", M, *D, "--pipeline", "bogus", "--out", "o.csz", msg="bogus"),
    _case("compress", "--model", M, *D, "--cr", "0", "--out", "o.csz", msg="--cr"),
    _case("decompress", "--model", "{w}/junk.csz", "--out", "o.pt"),
    _case("decompress", "--model", M, "--out", "o.onnx", msg=".pt"),
    # --config
    _case("train", "--model", "digitsnet", *D, "--config", "{w}/none.yaml", "--out", "o.pt", msg="not found"),
    _case("train", "--model", "digitsnet", *D, "--config", "{w}/notjson.json", "--out", "o.pt", msg="not JSON"),
    _case("prune", "--model", M, *D, "--config", "{w}/r.json", "--out", "o.pt", msg="no option 'body.0'"),
    _case("eval", "--model", M, *D, "--config", M, msg="not JSON or YAML"),
    _case("auto", "--model", M, *D, "--config", W, "--out", "o.pt", msg="is a folder"),
    # latency
    _case("prune", "--model", M, *D, "--cr", "0.8", "--threads", "0", "--out", "o.pt", msg="--threads"),
    _case("prune", "--model", M, *D, "--cr", "0.8", "--engine", "tensorrt", "--out", "o.pt", msg="--engine"),
    _case("prune", "--model", M, *D, "--cr", "0.8", "--latency-batch", "1,x", "--out", "o.pt", msg="--latency-batch"),
    _case("auto", "--model", M, *D, "--target-latency", "-1", "--out", "o.pt", msg="--target-latency"),
    _case("auto", "--model", M, *D, "--target-latency", "1", "--target-flops", "0.5", "--out", "o.pt",
          msg="not allowed with"),
    _case("auto", "--model", M, *D, "--search", "greedy", "--out", "o.pt", msg="--search"),
    _case("latency", "--model", M, "--plot", M, msg="is also an input"),
    _case("latency", "--model", M, "--plot", "{w}/p.svg", msg="--plot must end in .png"),
    _case("latency", "--model", M, "--top", "0", msg="--top"),
]


def _snapshot(*folders):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in folders for p in sorted(d.rglob("*")) if p.is_file()}


def test_the_battery_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("argv, message", CASES)
def test_bad_input(ws, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(ws, tmp_path)
    code = main([a.replace("{w}", str(ws)) for a in argv])
    out, err = capsys.readouterr()
    assert code not in (0, None), (argv, out, err)
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 4, err
    assert "Traceback" not in err + out
    if message:
        assert message in err, (message, err)
    assert _snapshot(ws, tmp_path) == before, "a file was written or an input changed"


def test_same_seed_same_weights_and_bytes(tmp_path):
    """Same command, same seed: the same weights; prune, export and quantize write the same file, byte for byte."""
    for name in ("a", "b"):
        assert main(["train", "--model", "digitsnet", "--data", "digits", "--epochs", "1", "--seed", "3", "--quiet",
                     "--out", str(tmp_path / f"{name}.pt")]) == 0
        assert main(["export", "--model", str(tmp_path / "a.pt"), "--out", str(tmp_path / f"{name}.onnx")]) == 0
        assert main(["prune", "--model", str(tmp_path / "a.pt"), "--data", "digits", "--cr", "0.8",
                     "--out", str(tmp_path / f"{name}-p.pt")]) == 0
        assert main(["quantize", "--model", str(tmp_path / "a.pt"), "--method", "cluster", "--clusters", "4",
                     "--epochs", "0", "--out", str(tmp_path / f"{name}.csz")]) == 0
    a, b = (convslim.load(tmp_path / f"{n}.pt").state_dict() for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for suffix in (".onnx", "-p.pt", ".csz"):
        assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"b{suffix}").read_bytes(), suffix


def test_output_selection_and_pipe_safe_stdout(ws, tmp_path, capsys):
    """A model returning (logits, features) works with --output 0 in train, prune and export."""
    m = tmp_path / "tuple.pt"
    assert main(["train", "--model", f"{ws}/tuple_net.py:make", "--data", "digits", "--output", "0", "--epochs", "1",
                 "--quiet", "--out", str(m)]) == 0
    factory = ["--model", f"{ws}/tuple_net.py:make", "--output", "0", "--weights", str(m)]
    assert main(["prune", *factory, "--data", "digits", "--cr", "0.8", "--out", str(tmp_path / "p.pt")]) == 0
    assert main(["export", *factory, "--out", str(tmp_path / "t.onnx")]) == 0
    again = convslim.load(tmp_path / "p.pt", trust_code=True)
    assert again(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_files_get_the_users_umask_and_stale_temps_go(tmp_path):
    old = os.umask(0o022)
    try:
        stale = tmp_path / ".o.txt.convslim-999999999-x.tmp"
        stale.write_text("left by a killed run")
        with atomic_path(tmp_path / "o.txt") as tmp:
            tmp.write_text("hello")
    finally:
        os.umask(old)
    assert (tmp_path / "o.txt").stat().st_mode & 0o777 == 0o644
    assert not stale.exists()


def test_interrupt_during_save_leaves_nothing(tmp_path, monkeypatch, capsys):
    """Ctrl-C or SIGTERM (both arrive as KeyboardInterrupt) while the file is being written."""
    def interrupted(payload, f, *a, **k):
        f.write(b"half a file")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", interrupted)
    code = main(["train", "--model", "digitsnet", "--data", "digits", "--epochs", "0", "--quiet",
                 "--out", str(tmp_path / "o.pt")])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_working(tmp_path, sig):
    script = textwrap.dedent("""
        import sys, time
        import convslim.train as train
        real_fit = train.fit
        def fit(*a, **k):
            print("working", flush=True)
            time.sleep(60)
        train.fit = fit
        from convslim.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, "train", "--model", "digitsnet", "--data", "digits",
                             "--quiet", "--out", str(tmp_path / "o.pt")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # a suite started in the background (`&`) inherits SIGINT ignored, and Python
                            # then installs no Ctrl-C handler: the child gets the default a terminal gives
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "working"
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_output_into_a_closed_pipe_still_saves(tmp_path):
    """`convslim train ... | head -1`: the reader goes away, the work still finishes and saves."""
    out = tmp_path / "o.pt"
    proc = subprocess.run(f"{sys.executable} -m convslim train --model digitsnet --data digits --epochs 1 --quiet "
                          f"--out {out} | head -c 1", shell=True, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    assert out.exists() and convslim.load(out) is not None
