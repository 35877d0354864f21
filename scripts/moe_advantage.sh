#!/usr/bin/env bash
# The MoE-advantage section of RESULTS.md, from the commands it quotes:
#   1. `moe compare`: dense vs 8x2 vs 16x4 at equal active compute, 2.4 M tokens each;
#   2. `moe compare --sweep`: 8 configurations, 1.2 M tokens each;
#   3. `moe upcycle`: the dense model of (1) upcycled to 8x2 vs 8x2 from scratch vs dense
#      continued, 1.2 M more tokens each.
# Every step is skipped when its output exists; the tables are spliced into RESULTS.md between
# the <!-- BEGIN name --> / <!-- END name --> markers and the plots copied to results/.
#   bash scripts/moe_advantage.sh        # from the project root; about 80 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
moe=${MOE:-./target/release/moe}
out=${OUT:-runs/advantage}
common=(--eval-batches 16)
[ -f $out/compare/compare.md ] || $moe compare --tokens 2.4M --out $out/compare "${common[@]}"
[ -f $out/sweep/compare.md ] || $moe compare --sweep --tokens 1.2M --out $out/sweep "${common[@]}"
[ -f $out/upcycle/compare.md ] ||
    $moe upcycle --from $out/compare/dense --moe 8x2 --tokens 1.2M --out $out/upcycle "${common[@]}"

# Copies the plots and splices compare.md (without its title line) into RESULTS.md.
for name in compare sweep upcycle; do
    mkdir -p results/$name
    cp $out/$name/val_vs_tokens.png $out/$name/val_vs_seconds.png results/$name/
    body=$(tail -n +3 $out/$name/compare.md)
    BODY="$body" awk -v name="$name" '
        $0 == "<!-- BEGIN " name " -->" { print; print ENVIRON["BODY"]; skip = 1; next }
        $0 == "<!-- END " name " -->" { skip = 0 }
        !skip { print }
    ' RESULTS.md > RESULTS.md.tmp && mv RESULTS.md.tmp RESULTS.md
done
echo "RESULTS.md updated; plots in results/compare, results/sweep, results/upcycle"
