#!/usr/bin/env bash
# The "MoE claim on the data-rich corpus" section of RESULTS.md (issue 20), from the commands
# it quotes, on the default corpus (`moe corpus`: the Rust documentation and Rust sources):
#   corpus  `moe corpus`: its size after deduplication;
#   rich-layer  `moe compare`: dense vs 8x2 vs 16x3+1 (a shared expert) at equal active compute,
#               per-layer balancing, 3.6 M tokens each (0.2 epochs: no repeated data);
#   rich-8m     the same three at 8 M tokens each (0.44 epochs), with the aux-loss-free bias;
#   small-epoch the `small` preset's dense model (width 128) against 16x3+1 and 64x3+1, one
#               epoch each (18 M tokens; about an hour for the three on 2 cores alone);
#   mini-epoch  the same at the `mini` preset (width 64, 0.5 M active parameters; about 50
#               minutes for the three).
# Every step is skipped when its output exists; tables are spliced into RESULTS.md between the
# <!-- BEGIN name --> / <!-- END name --> markers and the plots copied to results/.
#   bash scripts/moe_claim.sh        # from the project root; about 3 hours on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
moe=${MOE:-./target/release/moe}
out=${OUT:-runs}
mkdir -p "$out"
[ -f "$out/corpus.txt" ] || $moe corpus > "$out/corpus.txt"
[ -f "$out/rich-layer/compare.md" ] ||
    $moe compare --moe 8x2 16x3+1 --aux-loss-scope layer --tokens 3.6M --evals 12 --eval-batches 16 \
        --out "$out/rich-layer"
[ -f "$out/rich-8m/compare.md" ] ||
    $moe compare --moe 8x2 16x3+1 --bias-update-rate 0.001 --tokens 8M --evals 16 --eval-batches 16 \
        --out "$out/rich-8m"
[ -f "$out/small-epoch/compare.md" ] ||
    $moe compare --preset small --moe 16x3+1 64x3+1 --tokens 18M --evals 16 --eval-batches 16 \
        --out "$out/small-epoch"
[ -f "$out/mini-epoch/compare.md" ] ||
    $moe compare --preset mini --moe 16x3+1 64x3+1 --tokens 18M --evals 16 --eval-batches 16 \
        --out "$out/mini-epoch"

source scripts/splice.sh
(echo '```'; grep -v '^cache:' "$out/corpus.txt"; echo '```') > "$out/corpus.md"
splice corpus "$out/corpus.md"
for name in rich-layer rich-8m small-epoch mini-epoch; do
    mkdir -p results/$name
    cp "$out/$name/val_vs_tokens.png" "$out/$name/val_vs_seconds.png" "$out/$name/compare.json" results/$name/
    tail -n +3 "$out/$name/compare.md" > "$out/$name/body.md"
    splice $name "$out/$name/body.md"
done
for name in rich-8m small-epoch mini-epoch; do
    python3 scripts/val_gaps.py "$out/$name/compare.json" --every 2 > "$out/$name/curve.md"
    splice $name-curve "$out/$name/curve.md"
done
echo "RESULTS.md updated; plots in results/"
