#!/usr/bin/env python3
"""Validation loss along a `moe compare` run, as a Markdown table: one row per validation, the
reference (first model) and each other model with its gap to the reference in brackets.
    python3 scripts/val_gaps.py runs/rich-8m/compare.json [--every N]
Standard library only."""
import argparse
import json

ap = argparse.ArgumentParser()
ap.add_argument("compare_json")
ap.add_argument("--every", type=int, default=1, help="keep every N-th validation (and the last)")
a = ap.parse_args()
runs = json.load(open(a.compare_json))
runs = runs["runs"] if isinstance(runs, dict) else runs
ref = runs[0]
print("| step (tokens) | " + " | ".join(r["label"] for r in runs) + " |")
print("|---|" + "---:|" * len(runs))
n = len(ref["val"])
for i, v in enumerate(ref["val"]):
    if i % a.every and i != n - 1:
        continue
    cells = [f"{v['loss']:.3f}"]
    for r in runs[1:]:
        w = r["val"][i]
        cells.append(f"{w['loss']:.3f} ({w['loss'] - v['loss']:+.3f})")
    print(f"| {v['step']} ({v['tokens'] / 1e6:.2f} M) | " + " | ".join(cells) + " |")
