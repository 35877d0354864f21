#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of every target in fuzz/, one after the other
# on one core, SECONDS each. Seeds: the test fixtures, fuzz/seeds/, and a checkpoint of the tiny
# preset trained here for two steps. A crash (panic, overflow, out-of-memory, timeout) stops
# that target with its input in fuzz/artifacts/TARGET/; the others still run. Appends one row
# per target to results/fuzz/runs.tsv (date, target, seconds, runs, corpus size, crashes) and
# prints the totals per target that RELIABILITY.md quotes.
# Usage: bash scripts/fuzz.sh [SECONDS_PER_TARGET=600] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
all=(config_json tokenizer_json chat_template checkpoint_dir gguf_load safetensors_load server_request)
targets=("${@:-${all[@]}}")
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || exit 1
export RUSTC_BOOTSTRAP=1 # cargo-fuzz's sanitizer flags need nightly features

fx=crates/moe-infer/tests/fixtures
seed() { mkdir -p "fuzz/corpus/$1"; cp "${@:2}" "fuzz/corpus/$1/" 2>/dev/null; }
seed_ckpt() {
  local run=fuzz/corpus/.tiny-run
  if [ ! -d "$run/checkpoints" ]; then
    cargo run --release --quiet -- train --preset tiny --data README.md --steps 2 --seq-len 8 \
      --batch-size 2 --out "$run" --quiet >/dev/null || return 1
  fi
  local ck
  ck=$(ls -d "$run"/checkpoints/step-* | tail -1)
  mkdir -p fuzz/corpus/checkpoint_dir
  local i=0
  for f in config.json model.safetensors optimizer.safetensors state.json tokenizer.json checksums.json; do
    { printf "\\x$(printf %02x $i)"; cat "$ck/$f" 2>/dev/null; } >"fuzz/corpus/checkpoint_dir/seed-$f"
    i=$((i + 1))
  done
  cp "$ck/config.json" fuzz/corpus/config_json/tiny-checkpoint.json
}
for d in "$fx"/*/; do
  n=$(basename "$d")
  [ -f "$d/config.json" ] && { mkdir -p fuzz/corpus/config_json; cp "$d/config.json" "fuzz/corpus/config_json/$n.json"; }
done
seed tokenizer_json "$fx/olmoe/tokenizer.json" fuzz/seeds/tokenizer_json/*
seed chat_template "$fx/olmoe/chat_template.jinja" fuzz/seeds/chat_template/*
seed gguf_load "$fx"/gguf/*q4_0.gguf "$fx"/gguf/mixtral-f32.gguf
seed safetensors_load "$fx/olmoe/model.safetensors"
seed server_request fuzz/seeds/server_request/*
seed_ckpt || echo "warning: no checkpoint seeds (moe train failed)"

(cd fuzz && cargo fuzz build -O) || exit 1
mkdir -p results/fuzz fuzz/logs
[ -f results/fuzz/runs.tsv ] || printf "date\ttarget\tseconds\truns\tcorpus\tcrashes\n" >results/fuzz/runs.tsv
for t in "${targets[@]}"; do
  case $t in gguf_load | safetensors_load) max_len=300000 ;; checkpoint_dir) max_len=200000 ;; *) max_len=20000 ;; esac
  # crash-, oom-, timeout- and leak- files are failures (slow-unit- files are not)
  failures() { ls "fuzz/artifacts/$t" 2>/dev/null | grep -cE '^(crash|oom|timeout|leak)-'; }
  before=$(failures)
  start=$(date +%s)
  (cd fuzz && cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=$max_len \
    -timeout=20 -rss_limit_mb=2048 -print_final_stats=1) >"fuzz/logs/$t.log" 2>&1
  # libFuzzer's own count of seconds spent fuzzing (not building); the wall time if it died
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "fuzz/logs/$t.log" | grep -o '[0-9]* second' | grep -o '[0-9]*' | tail -1)
  took=${took:-$(($(date +%s) - start))}
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(($(failures) - before))
  corpus=$(ls "fuzz/corpus/$t" | wc -l)
  printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$(date -u +%Y-%m-%dT%H:%MZ)" "$t" "$took" "${runs:-0}" "$corpus" "$crashes" \
    | tee -a results/fuzz/runs.tsv
  [ "$crashes" -gt 0 ] && echo "  $t crashed: fuzz/artifacts/$t/ (log fuzz/logs/$t.log)"
done
echo "totals per target (seconds, runs, crashes):"
awk -F'\t' 'NR > 1 { s[$2] += $3; r[$2] += $4; c[$2] += $6 } END { for (t in s) printf "  %-18s %7d s %10d runs %3d crashes\n", t, s[t], r[t], c[t] }' results/fuzz/runs.tsv
