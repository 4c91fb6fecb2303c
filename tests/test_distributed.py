"""The same train command runs under torchrun with 2 processes (gloo on CPU)."""
import json
import os
import subprocess
import sys

import torch

import convslim


def test_torchrun_two_processes(tmp_path):
    out, log = tmp_path / "ddp.pt", tmp_path / "log.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "convslim", "train", "--model", "digitsnet", "--data", "digits", "--epochs", "4",
         "--lr", "0.05", "--batch-size", "32", "--quiet", "--device", "cpu", "--out", str(out), "--json", str(log)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(log.read_text())
    assert record["world_size"] == 2
    assert record["epochs"][-1]["val_acc"] > 70
    model = convslim.load(out)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
