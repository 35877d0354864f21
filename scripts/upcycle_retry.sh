#!/usr/bin/env bash
# Issue 20 item 7, "upcycling retried" in RESULTS.md: does an MoE upcycled from a trained dense
# model beat the dense model trained further for the same compute, when the continuation uses a
# lower peak learning rate and a short warm-up instead of the pre-training's schedule?
#   base      the `mini` preset's dense model (width 64, 0.5 M active parameters), 6 M tokens of
#             the default corpus (`moe compare` with only the dense variant keeps its checkpoint);
#   up-3e-3   `moe upcycle` 8x2 (each expert half the dense MLP), 6 M more tokens per model with
#             the pre-training's recipe (peak lr 3e-3, 40 warm-up steps), seed 7 (other windows);
#   up-1e-3   the same with peak lr 1e-3 and 10 warm-up steps.
# Every step is skipped when its output exists; the tables are spliced into RESULTS.md between
# <!-- BEGIN name --> / <!-- END name --> markers and the plots copied to results/.
#   bash scripts/upcycle_retry.sh     # from the project root; about 40 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
moe=${MOE:-./target/release/moe}
out=${OUT:-runs}/upcycle-retry
mkdir -p "$out"
common=(--tokens 6M --evals 12 --eval-batches 16 --precision fp32 --quiet)
[ -f "$out/base/compare.md" ] ||
    $moe compare --preset mini --moe dense "${common[@]}" --out "$out/base"
[ -f "$out/up-3e-3/compare.md" ] ||
    $moe upcycle --from "$out/base/dense" --moe 8x2 --seed 7 "${common[@]}" --out "$out/up-3e-3"
[ -f "$out/up-1e-3/compare.md" ] ||
    $moe upcycle --from "$out/base/dense" --moe 8x2 --seed 7 --lr 1e-3 --warmup 10 "${common[@]}" \
        --out "$out/up-1e-3"

source scripts/splice.sh
for name in up-3e-3 up-1e-3; do
    mkdir -p results/upcycle-retry/$name
    cp "$out/$name/val_vs_tokens.png" "$out/$name/compare.json" results/upcycle-retry/$name/
    tail -n +3 "$out/$name/compare.md" > "$out/$name/body.md"
    splice upcycle-retry-$name "$out/$name/body.md"
    python3 scripts/val_gaps.py "$out/$name/compare.json" --every 2 > "$out/$name/curve.md"
    splice upcycle-retry-$name-curve "$out/$name/curve.md"
done
echo "RESULTS.md updated; plots in results/upcycle-retry/"
