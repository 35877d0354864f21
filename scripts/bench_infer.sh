#!/usr/bin/env bash
# Prefill and decode speed of moe against llama.cpp on the same GGUF files (bf16, Q8_0, Q4_0,
# Q4_K_M, Q5_K_M, Q3_K_M, IQ4_XS) of random-weight Mixtral- and OLMoE-shaped models, 2 threads,
# with `moe bench infer`. Re-runnable: the peer and the files are built once.
#   bash scripts/bench_infer.sh [WORKDIR]     # from the project root; default WORKDIR /tmp/moe-bench-infer
#   TYPES="q4_k_m iq4_xs" bash scripts/bench_infer.sh     # a subset
# Needs a C++ compiler; scripts/llama_setup.sh builds the peer and the models and pip-installs
# the Python packages it needs. Nothing is committed from it.
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
  for q in ${TYPES:-bf16 q8_0 q4_0 q4_k_m q5_k_m q3_k_m iq4_xs}; do
    echo "== $arch $q"
    "$root/target/release/moe" bench infer --model "$work/$arch-1b-$q.gguf" --llama-bench "$src/build/bin/llama-bench"
  done
done
uptime
