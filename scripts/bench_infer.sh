#!/usr/bin/env bash
# Prefill and decode speed of moe against llama.cpp on the same GGUF files (bf16, Q8_0, Q4_0) of a
# random-weight Mixtral-shaped model, 2 threads, with `moe bench infer`.
#   bash scripts/bench_infer.sh [WORKDIR]     # from the project root; default WORKDIR /tmp/moe-bench-infer
# Needs python3 with numpy, torch, transformers and cmake (pip), and a C++ compiler; the peer and
# the models are built by scripts/llama_setup.sh. Nothing is committed from it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=${1:-/tmp/moe-bench-infer}
mkdir -p "$work"
uptime
cargo build --release --quiet
source scripts/llama_setup.sh "$work"

# Both engines on the same GGUF files, in the same run: prefill of 512 tokens and decoding of 64,
# 2 threads, 3 repetitions (medians for moe, means for llama-bench).
for arch in mixtral olmoe; do
  for q in bf16 q8_0 q4_0; do
    echo "== $arch $q"
    "$root/target/release/moe" bench infer --model "$work/$arch-1b-$q.gguf" --llama-bench "$src/build/bin/llama-bench"
  done
done
uptime
