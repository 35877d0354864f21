#!/usr/bin/env bash
# Training throughput of moe and, when PyTorch is installed, of the PyTorch peer
# (../shared/bench/torch_train_bench.py, Hugging Face models, eager fp32, 2 threads) in one run.
#   bash scripts/bench_train.sh            # from the project root
set -euo pipefail
cd "$(dirname "$0")/.."
uptime
cargo build --release --quiet
./target/release/moe bench train --presets bench-dense bench-moe8x2 bench-moe16x4 --warmup 2 --steps 5
peer=../shared/bench/torch_train_bench.py
if python3 -c "import torch, transformers" 2>/dev/null && [ -f "$peer" ]; then
  dir=$(mktemp -d)
  for cfg in dense moe8x2 moe16x4; do
    (cd "$dir" && python3 "$(realpath "$OLDPWD/$peer")" --impl hf --cfg "$cfg" --warmup 2 --steps 5) | tail -1
  done
else
  echo "PyTorch peer skipped: pip install torch transformers to measure it"
fi
uptime
