#!/usr/bin/env bash
# Training throughput of moe (fp32, and bf16 on AMX) and, when PyTorch is installed, of the
# PyTorch peer (../shared/bench/torch_train_bench.py: Hugging Face models eager fp32, and with
# bf16 autocast; 2 threads), one process at a time, in one run.
#   bash scripts/bench_train.sh [presets...]      # from the project root; default: all three
set -euo pipefail
cd "$(dirname "$0")/.."
presets=("${@:-bench-dense bench-moe8x2 bench-moe16x4}")
read -r -a presets <<< "${presets[*]}"
uptime
cargo build --release --quiet
for prec in fp32 bf16; do
  for p in "${presets[@]}"; do  # one process per preset, so its resident memory is its own
    ./target/release/moe bench train --presets "$p" --warmup 2 --steps 5 --precision "$prec"
  done
done
peer=../shared/bench/torch_train_bench.py
if python3 -c "import torch, transformers" 2>/dev/null && [ -f "$peer" ]; then
  dir=$(mktemp -d)
  peer=$(realpath "$peer")
  for p in "${presets[@]}"; do
    cfg=${p#bench-}
    for bf16 in 0 1; do
      (cd "$dir" && python3 "$peer" --impl hf --cfg "$cfg" --warmup 2 --steps 5 --bf16 $bf16) | tail -1 |
        python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("torch hf {cfg:8} bf16={bf16_autocast!s:5} {tokens_per_s_median:7.0f} tok/s  peak RSS {peak_rss_mb:.0f} MB  foreign cpu {foreign_cpu_frac_median:.2f}".format(**d))'
    done
  done
else
  echo "PyTorch peer skipped: pip install torch transformers to measure it"
fi
uptime
