"""The MoE claim across sizes (issue 20, item 6): validation loss against training compute for the
dense model and the best MoE of each size, from the comparisons RESULTS.md records (each
section's run table gives the training FLOPs per token, its curve table the validation loss
along the run), and a table of the speed-ups per size; plus, at the smallest size, the MoE on
its own shorter schedule (annealed at 70% of the dense model's tokens, seed 1234, from
results/budget-share/compare.json).

    pip install matplotlib        # once; never needed by CI
    python3 scripts/sizes_plot.py  # writes results/sizes/loss_vs_compute.png and prints the table
"""
import json
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "..")
text = open(os.path.join(root, "RESULTS.md")).read()

# (RESULTS.md section, label, the MoE variant to plot against dense)
SIZES = [("mini-epoch", "0.5 M active", "16x3+1"), ("small-epoch", "1.6 M active", "16x3+1"),
         ("rich-8m", "5.3 M active", "16x3+1")]


def block(name):
    m = re.search(rf"<!-- BEGIN {re.escape(name)} -->\n(.*?)<!-- END {re.escape(name)} -->", text, re.S)
    if not m:
        raise SystemExit(f"RESULTS.md has no section {name}")
    return m.group(1)


def rows(table):
    out = []
    for line in table.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            out.append([c.strip() for c in line.strip("|").split("|")])
    return out[0], out[1:]


fig, ax = plt.subplots(figsize=(7, 4.5))
print("| size | tokens per active parameter | MoE | final val loss dense / MoE | speed-up tokens | speed-up wall-clock |")
print("|---|---:|---|---|---:|---:|")
for (name, label, moe), color in zip(SIZES, ["tab:green", "tab:blue", "tab:red"]):
    head, runs = rows(block(name))
    col = {h: i for i, h in enumerate(head)}
    by = {r[0]: r for r in runs}
    gflop = {k: float(r[col["train GFLOP/token"]]) for k, r in by.items()}
    active = float(by["dense"][col["active params"]].split()[0])
    chead, curve = rows(block(name + "-curve"))
    tokens = [float(re.search(r"\(([\d.]+) M\)", r[0]).group(1)) for r in curve]
    for k, style in [("dense", "-"), (moe, "--")]:
        i = chead.index(k)
        loss = [float(r[i].split()[0]) for r in curve]
        flops = [t * 1e6 * gflop[k] * 1e9 for t in tokens]
        ax.plot(flops, loss, style, color=color, marker="o", ms=3, label=f"{label} {k}")
    final_tokens = tokens[-1]
    print(f"| {label} | {final_tokens / active:.0f} | {moe} | {by['dense'][col['final val loss']]} / "
          f"{by[moe][col['final val loss']]} | {by[moe][col['speed-up (tokens)']]} | "
          f"{by[moe][col['speed-up (wall-clock)']]} |")
# the shorter schedule ("Shorter schedules" in RESULTS.md): the same mini MoE, annealed at 70%
short = json.load(open(os.path.join(root, "results", "budget-share", "compare.json")))
label = "16x3+1@0.7"
run = next(r for r in short["runs"] if r["label"] == label)
per_token = next(r for r in short["rows"] if r["label"] == label)["train_flops_per_token"]
ax.plot([v["tokens"] * per_token for v in run["val"]], [v["loss"] for v in run["val"]], ":", color="tab:green",
        marker="s", ms=3, label="0.5 M active 16x3+1, annealed at 70%")
ax.set_xscale("log")
ax.set_xlabel("training FLOPs")
ax.set_ylabel("validation loss (nats)")
ax.set_title("dense (solid) vs MoE (dashed; dotted: a shorter schedule) at equal active compute", fontsize=10)
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
os.makedirs(os.path.join(root, "results", "sizes"), exist_ok=True)
fig.tight_layout()
fig.savefig(os.path.join(root, "results", "sizes", "loss_vs_compute.png"), dpi=120)
print("wrote results/sizes/loss_vs_compute.png")
