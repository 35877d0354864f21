"""Issue 20 item 5: the speed-ups of 16x3+1 over dense at the `mini` preset per seed, with the
mean and the sample standard deviation, for equal tokens (one epoch) and equal time (5 minutes
per model). Reads the compare.json of each run (copied to results/seeds/ by scripts/seeds.sh);
prints markdown.

    python3 scripts/seeds_table.py results/seeds
"""

import json
import statistics
import sys
from pathlib import Path


def load(path):
    d = json.loads(Path(path).read_text())
    dense = d["rows"][0]
    moe = next(r for r in d["rows"] if r["label"] == "16x3+1")
    seed = d["train"]["seed"]
    return seed, dense, moe


def fmt(v, spec=".2f", suffix="x"):
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def table(title, runs):
    print(f"**{title}**\n")
    print("| seed | dense final loss | 16x3+1 final loss | gap (nats) | speed-up (tokens) | "
          "speed-up (wall-clock) | speed-up (wall-clock, load-adjusted) | dense / 16x3+1 tokens |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    cols = {"gap": [], "tok": [], "time": [], "adj": []}
    for seed, dense, moe in runs:
        gap = dense["final_loss"] - moe["final_loss"]
        tok, tim, adj = moe.get("speedup_tokens"), moe.get("speedup_time"), moe.get("speedup_time_adjusted")
        for k, v in zip(cols, [gap, tok, tim, adj]):
            if v is not None:
                cols[k].append(v)
        print(f"| {seed} | {dense['final_loss']:.4f} | {moe['final_loss']:.4f} | {gap:.3f} | {fmt(tok)} | "
              f"{fmt(tim)} | {fmt(adj)} | {dense['tokens'] / 1e6:.2f} M / {moe['tokens'] / 1e6:.2f} M |")

    def stat(v, spec, suffix):
        if len(v) < 2:
            return fmt(v[0] if v else None, spec, suffix)
        return f"{statistics.mean(v):{spec}}{suffix} ± {statistics.stdev(v):{spec}}"

    print(f"| mean ± sd ({len(runs)} seeds) | | | {stat(cols['gap'], '.3f', '')} | {stat(cols['tok'], '.2f', 'x')} | "
          f"{stat(cols['time'], '.2f', 'x')} | {stat(cols['adj'], '.2f', 'x')} | |\n")


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "results/seeds")
    tokens = [load("results/mini-epoch/compare.json")]
    tokens += [load(p) for p in sorted(out.glob("mini-s*/compare.json"))]
    minutes = [load(p) for p in sorted(out.glob("minutes-s*/compare.json"))]
    table("Equal tokens: one epoch (18 M tokens) per model", tokens)
    if minutes:
        table("Equal time: 5 minutes of training steps per model", minutes)


if __name__ == "__main__":
    main()
