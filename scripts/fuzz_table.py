#!/usr/bin/env python3
"""The fuzzing totals per target from results/fuzz/runs.tsv (what scripts/fuzz.sh appends), as
the markdown table of RELIABILITY.md; with --update, written between its `<!-- BEGIN fuzz -->`
markers.

    python3 scripts/fuzz_table.py --update
"""
import csv
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TARGETS = ["gguf_load", "safetensors_load", "config_json", "tokenizer_json", "chat_template", "checkpoint_dir", "server_request"]


def table():
    rows = list(csv.DictReader(open(os.path.join(ROOT, "results", "fuzz", "runs.tsv")), delimiter="\t"))
    out = ["| target | fuzzing time | runs | runs/s | corpus | crashes | sessions |", "|---|---:|---:|---:|---:|---:|---:|"]
    for t in TARGETS:
        mine = [r for r in rows if r["target"] == t]
        secs = sum(int(r["seconds"]) for r in mine)
        runs = sum(int(r["runs"]) for r in mine)
        corpus = mine[-1]["corpus"] if mine else "-"
        crashes = sum(int(r["crashes"]) for r in mine)
        rate = f"{runs / secs:.0f}" if secs else "-"
        out.append(f"| `{t}` | {secs / 60:.0f} min | {runs:,} | {rate} | {corpus} | {crashes} | {len(mine)} |")
    return "\n".join(out)


def main():
    t = table()
    if "--update" in sys.argv:
        path = os.path.join(ROOT, "RELIABILITY.md")
        text = open(path).read()
        new, n = re.subn(r"<!-- BEGIN fuzz -->.*?<!-- END fuzz -->", f"<!-- BEGIN fuzz -->\n{t}\n<!-- END fuzz -->",
                         text, flags=re.S)
        if n != 1:
            sys.exit("RELIABILITY.md has no <!-- BEGIN fuzz --> ... <!-- END fuzz --> block")
        open(path, "w").write(new)
    print(t)


if __name__ == "__main__":
    main()
