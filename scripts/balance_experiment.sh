#!/usr/bin/env bash
# Load-balancing experiment of RESULTS.md: the default MoE trained several times on the default
# corpus, same data and seed, with (a) no balancing, (b) the Switch loss, (c) aux-loss-free
# bias balancing; then `moe plot` compares them.
#   bash scripts/balance_experiment.sh [STEPS]      # from the project root; ~25 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-400}
out=runs/balance
cargo build --release --quiet
moe=./target/release/moe
common=(--steps "$steps" --eval-every 50 --sample-tokens 0 --quiet --z-loss-coef 0.001 --data rust-books)
[ -d $out/none ] || $moe train --out $out/none "${common[@]}" --aux-loss-coef 0
[ -d $out/switch ] || $moe train --out $out/switch "${common[@]}" --aux-loss-coef 0.01
[ -d $out/aux-free ] || $moe train --out $out/aux-free "${common[@]}" --aux-loss-coef 0 --bias-update-rate 0.001
[ -d $out/switch-layer ] || $moe train --out $out/switch-layer "${common[@]}" --aux-loss-coef 0.01 --aux-loss-scope layer
$moe plot --runs $out/none $out/switch $out/switch-layer $out/aux-free --labels none switch-global switch-layer aux-free --out $out
