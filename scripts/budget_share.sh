#!/usr/bin/env bash
# Issue 20 item 5, "Shorter schedules" in RESULTS.md: does the MoE, trained for only a share of
# the dense model's tokens with its learning-rate schedule annealed at the end of that share,
# reach the dense model's final loss? `mini` preset, one epoch (18 M tokens) for the dense
# model, 16x3+1 with 55%, 60% and 70% of it (`16x3+1@B`), all four in lockstep, seed 1234;
# then dense against 16x3+1@0.6 with seed 1 (budget-share-s1) and @0.7 (budget-share-s1-70),
# and against 16x3+1@0.6 and @0.7 with seeds 2, 3 and 4 (budget-share-s2, -s3, -s4); then
# 32x3+1@0.6, 64x3+1@0.5 and 64x3+1@0.6 with seed 1234 (experts-budget), 32x3+1@0.6 with seeds
# 1, 2 and 3 (experts-budget-s1, -s2, -s3), and 32x3+1 at 50% and 55% (experts-budget-short).
# The tables are spliced into RESULTS.md between the <!-- BEGIN name --> / <!-- END name -->
# markers and the plots copied to results/name/.
#   bash scripts/budget_share.sh     # from the project root; about two and a half hours on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
moe=${MOE:-./target/release/moe}
out=${OUT:-runs}/budget-share
[ -f "$out/compare.md" ] ||
    $moe compare --preset mini --moe 16x3+1@0.55 16x3+1@0.6 16x3+1@0.7 --tokens 18M --evals 16 \
        --eval-batches 16 --precision fp32 --quiet --out "$out"
[ -f "$out-s1/compare.md" ] ||
    $moe compare --preset mini --moe 16x3+1@0.6 --tokens 18M --evals 16 --eval-batches 16 \
        --precision fp32 --seed 1 --quiet --out "$out-s1"
[ -f "$out-s1-70/compare.md" ] ||
    $moe compare --preset mini --moe 16x3+1@0.7 --tokens 18M --evals 16 --eval-batches 16 \
        --precision fp32 --seed 1 --quiet --out "$out-s1-70"
for seed in 2 3 4; do
    [ -f "$out-s$seed/compare.md" ] ||
        $moe compare --preset mini --moe 16x3+1@0.6 16x3+1@0.7 --tokens 18M --evals 16 --eval-batches 16 \
            --precision fp32 --seed $seed --quiet --out "$out-s$seed"
done
# more experts of the same width on the shorter schedule (experts-budget)
[ -f "$(dirname "$out")/experts-budget/compare.md" ] ||
    $moe compare --preset mini --moe 32x3+1@0.6 64x3+1@0.5 64x3+1@0.6 --tokens 18M --evals 16 \
        --eval-batches 16 --precision fp32 --quiet --out "$(dirname "$out")/experts-budget"
for seed in 1 2 3; do
    [ -f "$(dirname "$out")/experts-budget-s$seed/compare.md" ] ||
        $moe compare --preset mini --moe 32x3+1@0.6 --tokens 18M --evals 16 --eval-batches 16 \
            --precision fp32 --seed $seed --quiet --out "$(dirname "$out")/experts-budget-s$seed"
done
[ -f "$(dirname "$out")/experts-budget-short/compare.md" ] ||
    $moe compare --preset mini --moe 32x3+1@0.5 32x3+1@0.55 --tokens 18M --evals 16 --eval-batches 16 \
        --precision fp32 --quiet --out "$(dirname "$out")/experts-budget-short"
source scripts/splice.sh
for name in budget-share budget-share-s1 budget-share-s1-70 budget-share-s2 budget-share-s3 budget-share-s4 \
    experts-budget experts-budget-s1 experts-budget-s2 experts-budget-s3 experts-budget-short; do
    dir=$(dirname "$out")/$name
    mkdir -p results/$name
    cp "$dir/val_vs_tokens.png" "$dir/val_vs_seconds.png" "$dir/compare.json" results/$name/
    tail -n +3 "$dir/compare.md" > "$dir/body.md"
    splice $name "$dir/body.md"
done
echo "RESULTS.md updated; plots in results/budget-share*/"
