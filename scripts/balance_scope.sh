#!/usr/bin/env bash
# The "balancing scope" rows of RESULTS.md (issue 20): the main job (`moe train`, the default
# preset, 600 steps on the default corpus) under four balancing recipes and two seeds:
#   global      Switch loss pooled over layers (Hugging Face's form), coefficient 0.01
#   layer       Switch loss per layer, averaged
#   global+bias global loss plus the aux-loss-free selection bias (DeepSeek-V3), rate 0.001
#   layer+bias  per-layer loss plus the bias
# Each run is skipped when its checkpoint exists; the table (`moe plot`) is spliced into
# RESULTS.md between <!-- BEGIN balance-scope --> and <!-- END balance-scope -->.
#   bash scripts/balance_scope.sh      # from the project root; about 30 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
moe=${MOE:-./target/release/moe}
out=${OUT:-runs}
mkdir -p "$out"
declare -A flags=(
    [global]="--aux-loss-scope global --bias-update-rate 0"
    [layer]="--aux-loss-scope layer --bias-update-rate 0"
    [global+bias]="--aux-loss-scope global --bias-update-rate 0.001"
    [layer+bias]="--aux-loss-scope layer --bias-update-rate 0.001"
)
runs=() labels=()
for name in global layer global+bias layer+bias; do
    for seed in 1234 7; do
        dir="$out/scope-${name/+/-}-s$seed"
        [ -f "$dir/checkpoints/latest" ] ||
            $moe train ${flags[$name]} --seed "$seed" --sample-tokens 0 --out "$dir" > "$dir.log" 2>&1
        runs+=("$dir") labels+=("$name, seed $seed")
    done
done
$moe plot --runs "${runs[@]}" --labels "${labels[@]}" --out "$out/scope-plots" > "$out/scope.md"
source scripts/splice.sh
(echo "\`moe train \$FLAGS --seed S\` (600 steps, batch 16 x 128, lr 3e-3; FLAGS per row as in scripts/balance_scope.sh)"
 echo; grep '^|' "$out/scope.md") > "$out/scope-body.md"
splice balance-scope "$out/scope-body.md"
echo "RESULTS.md updated"
