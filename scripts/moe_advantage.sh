#!/usr/bin/env bash
# The MoE-advantage sections of RESULTS.md, from the commands they quote:
#   1. `moe compare`: dense vs 8x2 vs 16x4 at equal active compute, 2.4 M tokens each;
#   2. `moe compare --sweep`: 8 configurations, 1.2 M tokens each;
#   3. `moe upcycle`: the dense model of (1) upcycled to 8x2 vs 8x2 from scratch vs dense
#      continued, 1.2 M more tokens each;
#   4. `moe compare` with aux-loss-free balancing: dense vs 8x2, 1.2 M tokens;
#   5. `moe balance`: the measured expert loads of (1) placed on 4 ranks.
# Every step is skipped when its output exists; tables are spliced into RESULTS.md between the
# <!-- BEGIN name --> / <!-- END name --> markers and the plots copied to results/.
#   bash scripts/moe_advantage.sh        # from the project root; about 2 hours on 2 cores
# History: these ran on the Rust books alone (`--data rust-books`), 1.75 M training tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
moe=${MOE:-./target/release/moe}
out=${OUT:-runs/advantage}
common=(--eval-batches 16 --data rust-books)   # the corpus of 2026-11 (the books only)
[ -f $out/compare/compare.md ] || $moe compare --tokens 2.4M --out $out/compare "${common[@]}"
[ -f $out/sweep/compare.md ] || $moe compare --sweep --tokens 1.2M --out $out/sweep "${common[@]}"
[ -f $out/upcycle/compare.md ] ||
    $moe upcycle --from $out/compare/dense --moe 8x2 --tokens 1.2M --out $out/upcycle "${common[@]}"
[ -f $out/aux-free/compare.md ] ||
    $moe compare --moe 8x2 --aux-loss-coef 0 --bias-update-rate 0.001 --tokens 1.2M --out $out/aux-free "${common[@]}"
for m in 8x2 16x4; do
    $moe balance --run $out/compare/$m --ranks 4 --redundant 4 > $out/balance-$m.md
done

source scripts/splice.sh
for name in compare sweep upcycle aux-free; do
    mkdir -p results/$name
    cp $out/$name/val_vs_tokens.png $out/$name/val_vs_seconds.png results/$name/
    tail -n +3 $out/$name/compare.md > $out/$name/body.md
    splice $name $out/$name/body.md
done
for m in 8x2 16x4; do splice balance-$m $out/balance-$m.md; done
echo "RESULTS.md updated; plots in results/"
