#!/usr/bin/env bash
# Issue 20 item 3, "learning rate per size" in RESULTS.md: the peak learning rate of the dense
# model and of the MoE (16x3+1) at the `mini` preset (width 64, 0.5 M active parameters), each
# pair a `moe compare` of 6 M tokens (a third of an epoch) on the default corpus, seed 1234.
# A recipe whose comparison used a learning rate too low (or too high) for one of the two would
# bias the speed-up; this checks the default (3e-3) against 1.5e-3, 6e-3 and 1.2e-2.
# Steps whose output exists are skipped; the table is spliced into RESULTS.md between the
# <!-- BEGIN lr-sweep --> / <!-- END lr-sweep --> markers.
#   bash scripts/lr_sweep.sh     # from the project root; about 30 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
moe=${MOE:-./target/release/moe}
out=${OUT:-runs}/lr-sweep
mkdir -p "$out"
lrs=(1.5e-3 3e-3 6e-3 1.2e-2)
for lr in "${lrs[@]}"; do
    [ -f "$out/mini-$lr/compare.md" ] ||
        $moe compare --preset mini --moe 16x3+1 --tokens 6M --lr "$lr" --evals 6 --eval-batches 16 \
            --precision fp32 --quiet --out "$out/mini-$lr"
done
python3 - "$out" "${lrs[@]}" > "$out/table.md" <<'PY'
import json, sys
out, lrs = sys.argv[1], sys.argv[2:]
print("| peak lr | dense final val loss | 16x3+1 final val loss | gap | 16x3+1 tokens to dense's final loss | command |")
print("|---|---:|---:|---:|---:|---|")
for lr in lrs:
    d = json.load(open(f"{out}/mini-{lr}/compare.json"))
    dense, moe = d["runs"][0], d["runs"][1]
    a, b = dense["val"][-1]["loss"], moe["val"][-1]["loss"]
    row = next(r for r in d["rows"] if r["label"] == moe["label"])
    reach = row.get("reach")
    reach = f"{reach[0] / 1e6:.2f} M ({row['speedup_tokens']:.2f}x fewer)" if reach else "not reached"
    cmd = f"`moe compare --preset mini --moe 16x3+1 --tokens 6M --lr {lr} --evals 6 --eval-batches 16`"
    print(f"| {lr} | {a:.4f} | {b:.4f} | {b - a:+.4f} | {reach} | {cmd} |")
PY
source scripts/splice.sh
splice lr-sweep "$out/table.md"
echo "RESULTS.md updated"
