#!/usr/bin/env bash
# Serving load test: `moe serve` against llama.cpp's llama-server on the same GGUF files
# (Mixtral- and OLMoE-shaped 1 B, Q8_0 and Q4_0), 2 threads each, continuous batching on both
# (--parallel 64), loopback only, with scripts/bench_serve.py at 1, 4, 16 and 64 concurrent
# clients (2 streamed requests each, at least 8 per level, 64 prompt tokens, 32 new tokens, ignore_eos).
#   bash scripts/bench_serve.sh [WORKDIR]     # from the project root; default /tmp/moe-bench-infer
# A subset: ENGINES="moe" ARCHS="mixtral" QUANTS="q8_0" CLIENTS="1 16"; MOE=path/to/moe runs
# another build of moe (before/after a change), OUT=file another results file.
# The peer and the models come from scripts/llama_setup.sh. Results: WORKDIR/serve.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=${1:-/tmp/moe-bench-infer}
uptime
cargo build --release --quiet
source scripts/llama_setup.sh "$work"
out=${OUT:-$work/serve.jsonl}
moe=${MOE:-$root/target/release/moe}
: > "$out"
port=18431
wait_ready() {  # bounded: at most 120 s
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" > /dev/null && return 0
    sleep 0.2
  done
  echo "server on port $port did not start" >&2
  return 1
}
for arch in ${ARCHS:-mixtral olmoe}; do
  for q in ${QUANTS:-q8_0 q4_0}; do
    gguf="$work/$arch-1b-$q.gguf"
    for engine in ${ENGINES:-moe llama}; do
      if [ "$engine" = moe ]; then
        RAYON_NUM_THREADS=2 "$moe" serve --model "$gguf" --alias m --port $port \
          --parallel 64 --ctx-size 128 2> "$work/serve-$engine.log" &
      else
        "$src/build/bin/llama-server" -m "$gguf" --alias m --port $port --host 127.0.0.1 -t 2 -tb 2 \
          --parallel 64 -c $((64 * 128)) --no-webui > "$work/serve-$engine.log" 2>&1 &
      fi
      pid=$!
      if wait_ready; then
        python3 scripts/bench_serve.py --url "http://127.0.0.1:$port" --model m --clients ${CLIENTS:-1 4 16 64} \
          --label "$engine $arch $q" >> "$out"
      fi
      kill $pid; wait $pid 2> /dev/null || true
    done
  done
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r["label"], r["clients"]): r for r in rows}
print("| model | clients | moe tok/s | llama-server tok/s | ratio | TTFT p50/p99 moe (s) | llama | ITL p50/p99 moe (ms) | llama | failed moe/llama |")
print("|---|---|---|---|---|---|---|---|---|---|")
for (label, n), m in by.items():
    if not label.startswith("moe "):
        continue
    l = by.get(("llama " + label[4:], n))
    if l:
        print(f"| {label[4:]} | {n} | {m['tokens_per_s']} | {l['tokens_per_s']} | {m['tokens_per_s'] / max(l['tokens_per_s'], 1e-9):.2f} "
              f"| {m['ttft_p50_s']}/{m['ttft_p99_s']} | {l['ttft_p50_s']}/{l['ttft_p99_s']} "
              f"| {m['itl_p50_ms']}/{m['itl_p99_ms']} | {l['itl_p50_ms']}/{l['itl_p99_ms']} | {m['errors']}/{l['errors']} |")
PY
uptime
