#!/usr/bin/env bash
# Issue 20 item 5, "Speed-ups over seeds" in RESULTS.md: the `mini` comparison (dense against
# 16x3+1, the best wall-clock recipe) repeated with other seeds (initialisation and data order),
# for two kinds of budget:
#   tokens-S   one epoch (18 M tokens) per model, seeds 1 and 2; the third seed is the
#              `mini-epoch` run of scripts/moe_claim.sh (seed 1234, results/mini-epoch);
#   minutes-S  5 minutes of training steps per model (equal time), seeds 1, 2 and 3.
# Each run's compare.json and curves are copied to results/seeds/; scripts/seeds_table.py prints
# the per-seed speed-ups from there with their mean and spread, spliced into RESULTS.md between
# the <!-- BEGIN seeds --> / <!-- END seeds --> markers. Every run is skipped when its output
# exists.
#   bash scripts/seeds.sh     # from the project root; about 2 hours 10 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
moe=${MOE:-./target/release/moe}
out=${OUT:-runs}/seeds
mkdir -p "$out"
common=(--preset mini --moe 16x3+1 --evals 16 --eval-batches 16 --precision fp32 --quiet)
for s in 1 2; do
    [ -f "$out/mini-s$s/compare.md" ] ||
        $moe compare "${common[@]}" --tokens 18M --seed $s --out "$out/mini-s$s"
done
for s in 1 2 3; do
    [ -f "$out/minutes-s$s/compare.md" ] ||
        $moe compare "${common[@]}" --minutes 5 --seed $s --out "$out/minutes-s$s"
done
for run in "$out"/mini-s* "$out"/minutes-s*; do
    [ -f "$run/compare.json" ] || continue
    mkdir -p "results/seeds/$(basename "$run")"
    cp "$run/compare.json" "$run/val_vs_tokens.png" "$run/val_vs_seconds.png" "results/seeds/$(basename "$run")/"
done
python3 scripts/seeds_table.py results/seeds > "$out/seeds.md"
source scripts/splice.sh
splice seeds "$out/seeds.md"
