#!/usr/bin/env bash
# Decoding under a memory budget (BENCHMARKS.md, "Experts under a memory budget"): the
# Mixtral-shaped model of 1.15 B random bf16 parameters (2.15 GiB of weights, written by
# scripts/make_checkpoint.py) decodes 48 tokens with --max-memory from unlimited down to a
# quarter of its weights, 2 threads. Before every run the model's files are dropped from the OS
# page cache, so each run starts cold and every expert read is a disk read.
#   bash scripts/bench_memory.sh [WORKDIR]     # from the project root; default /tmp/moe-bench-infer
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/moe-bench-infer}
model="$work/mixtral-1b"
mkdir -p "$work"
uptime
cargo build --release --quiet
[ -f "$model/config.json" ] || python3 scripts/make_checkpoint.py --arch mixtral --out "$model"
drop_cache() {
  python3 - "$model" <<'PY'
import glob, os, sys
for f in glob.glob(os.path.join(sys.argv[1], "*.safetensors")):
    fd = os.open(f, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
}
echo "| --max-memory | run | new tokens/s | expert hit rate | read from disk | prefetched (used) | peak RSS |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for budget in none 1.6GiB 1.2GiB 1.0GiB 0.6GiB; do
  flag=()
  [ "$budget" != none ] && flag=(--max-memory "$budget")
  for rep in 1 2; do
    drop_cache
    log=$(target/release/moe generate --model "$model" --prompt "the router" --max-tokens 48 --temperature 1.0 \
      --seed 3 "${flag[@]}" 2>&1 >/dev/null)
    tps=$(grep -o "at [0-9.]* tokens/s" <<<"$log" | grep -o "[0-9.]*")
    rss=$(grep -o "peak RSS [0-9.]* [KMG]iB" <<<"$log" | grep -o "[0-9.]* [KMG]iB")
    if grep -q "expert cache" <<<"$log"; then
      hit=$(grep -o "hit rate [0-9.]*%" <<<"$log" | grep -o "[0-9.]*%")
      read=$(grep -o "), [0-9.]* [KMG]iB read" <<<"$log" | grep -o "[0-9.]* [KMG]iB")
      pre=$(grep -o "prefetch: [0-9]* experts read ahead, [0-9]*" <<<"$log" | grep -o "[0-9]*" | paste -sd' ')
      pre="${pre% *} (${pre#* })"
    else
      hit="-"; read="-"; pre="-"
    fi
    echo "| $budget | $rep | $tps | $hit | $read | $pre | $rss |"
  done
done
uptime
