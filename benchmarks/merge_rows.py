"""Fold the result rows that `gpu_session.sh` (part "rows") made side by side into results/: each row
ran in its own copy of benchmarks/, so each copy's cache files hold that row's new runs. New keys
are added, each marked with the machine that made it; a key already here is kept, and a differing
reading of it is printed (the same run on another machine). Run from benchmarks/:

    python merge_rows.py /path/to/unpacked/rows
"""
import argparse
import json
import re
import sys
from pathlib import Path

from common import RESULTS, machine_label as label
from convslim.fileio import write_text_atomic


def merge(rows: Path):
    added = {}
    for src in sorted(rows.glob("*/results/**/*.json")):
        dst = RESULTS.joinpath(*src.relative_to(rows).parts[2:])      # NAME/results/<table>/<file>
        new = json.loads(src.read_text())
        if not isinstance(new, dict) or not isinstance(new.get("runs"), dict):   # a RunCache file only
            continue
        old = json.loads(dst.read_text()) if dst.exists() else {**new, "runs": {}, "commands": []}
        theirs = label(new.get("machine", {}))
        ours = label(old.get("machine", {}))
        for key, rec in new["runs"].items():
            if key in old["runs"]:
                a, b = old["runs"][key], rec
                if a.get("test") != b.get("test") and b.get("machine", theirs) != a.get("machine", ours):
                    print(f"{dst.name}: {key}: kept test {a.get('test')}, not {b.get('test')} ({theirs})")
                continue
            old["runs"][key] = {**rec, "machine": rec.get("machine", theirs)} if theirs != ours else rec
            added.setdefault(dst, []).append(key)
        if dst in added:
            for line in new.get("commands", []):      # the copy also holds the commands that were here
                line = re.sub(r"\S*/(\.gpu|shared/bases)/", "../../shared/bases/", line)   # the bases, carried or not
                tagged = line if theirs == ours else f"{line}  # on {theirs}"
                if line not in old["commands"] and tagged not in old["commands"]:
                    old["commands"].append(tagged)
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(dst, json.dumps(old, indent=1))
    for log in sorted((rows / "runs" / "auto_oracle").glob("*.json")):   # the searches' step logs
        steps = RESULTS / "auto_oracle" / "steps" / log.name
        if not steps.exists() and json.loads(log.read_text()).get("probes"):
            steps.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(steps, log.read_text())
            added.setdefault(steps, []).append("step log")
    for dst, keys in added.items():
        print(f"{dst.relative_to(RESULTS)}: {len(keys)} new runs")
    return added


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", type=Path, help="the unpacked rows/ folder of rows.tar.gz")
    args = ap.parse_args()
    if not args.rows.is_dir():
        sys.exit(f"error: {args.rows} is not a folder")
    merge(args.rows)


if __name__ == "__main__":
    main()
