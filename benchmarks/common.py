"""Shared by the benchmark scripts: where results go and how tables are written."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# the benchmarks' CIFAR-10; CONVSLIM_CIFAR points elsewhere (the GPU machine has no ../shared)
CIFAR = Path(os.environ.get("CONVSLIM_CIFAR") or
             Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz")


def machine():
    """The CPU and library versions, so a figure can be read in context."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name, payload, markdown):
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "commit": git_commit(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    print(markdown)


def machine_label(m=None):
    """A short name for a machine record: its GPU if it had one, else its CPU; and the torch version."""
    m = machine() if m is None else m
    return f"{m.get('gpu') or m.get('cpu')}, torch {m.get('torch')}"


class RunCache:
    """One table's finished runs, {key: record}, with the command lines that made them; rewritten
    atomically after every run, so a stopped benchmark resumes where it was."""

    def __init__(self, path, script):
        from convslim.fileio import write_text_atomic

        self.path, self.script, self._write = Path(path), script, write_text_atomic
        old = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.runs, self.commands = old.get("runs", {}), old.get("commands", [])

    def __contains__(self, key):
        return key in self.runs

    def put(self, key, record):
        record = {**record, "machine": record.get("machine", machine_label())}   # a cache file can mix machines
        self.runs[key] = record
        line = " ".join([f"python {self.script}", *sys.argv[1:]])
        if line not in self.commands:
            self.commands.append(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write(self.path, json.dumps({"machine": machine(), "commit": git_commit(),
                                           "commands": self.commands, "runs": self.runs}, indent=1))
        print(f"  {key}: " + ", ".join(f"{k} {v:.3f}" for k, v in record.items() if isinstance(v, float)), flush=True)
