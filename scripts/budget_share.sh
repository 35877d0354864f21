#!/usr/bin/env bash
# Issue 20 item 5, "Shorter schedules" in RESULTS.md: does the MoE, trained for only a share of
# the dense model's tokens with its learning-rate schedule annealed at the end of that share,
# reach the dense model's final loss? `mini` preset, one epoch (18 M tokens) for the dense
# model, 16x3+1 with 55%, 60% and 70% of it (`16x3+1@B`), all four in lockstep, seed 1234.
# The table is spliced into RESULTS.md between the <!-- BEGIN budget-share --> /
# <!-- END budget-share --> markers and the plots copied to results/budget-share/.
#   bash scripts/budget_share.sh     # from the project root; about 40 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
moe=${MOE:-./target/release/moe}
out=${OUT:-runs}/budget-share
[ -f "$out/compare.md" ] ||
    $moe compare --preset mini --moe 16x3+1@0.55 16x3+1@0.6 16x3+1@0.7 --tokens 18M --evals 16 \
        --eval-batches 16 --precision fp32 --quiet --out "$out"
mkdir -p results/budget-share
cp "$out/val_vs_tokens.png" "$out/val_vs_seconds.png" "$out/compare.json" results/budget-share/
tail -n +3 "$out/compare.md" > "$out/body.md"
source scripts/splice.sh
splice budget-share "$out/body.md"
echo "RESULTS.md updated; plots in results/budget-share/"
