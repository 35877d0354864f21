#!/usr/bin/env bash
# Training throughput of moe (fp32, and bf16 on AMX) and, when PyTorch is installed, of the
# PyTorch peer (../shared/bench/torch_train_bench.py: Hugging Face models eager fp32, and with
# bf16 autocast; 2 threads). One process at a time; per preset and precision, moe and PyTorch run
# back to back, so that both see the same machine (it is shared and its load drifts).
#   bash scripts/bench_train.sh [presets...]      # from the project root; default: all three
#   ROUNDS=3 bash scripts/bench_train.sh          # repeat the whole sequence, summary per round
set -euo pipefail
cd "$(dirname "$0")/.."
presets=("${@:-bench-dense bench-moe8x2 bench-moe16x4}")
read -r -a presets <<< "${presets[*]}"
rounds=${ROUNDS:-1}
uptime
cargo build --release --quiet
peer=$(realpath ../shared/bench/torch_train_bench.py 2>/dev/null || true)
torch=0
if python3 -c "import torch, transformers" 2>/dev/null && [ -n "$peer" ] && [ -f "$peer" ]; then
  torch=1
else
  echo "PyTorch peer skipped: pip install torch transformers to measure it"
fi
dir=$(mktemp -d)
summary=()
for round in $(seq "$rounds"); do
  for p in "${presets[@]}"; do  # one process per preset, so its resident memory is its own
    for prec in fp32 bf16; do
      out=$(./target/release/moe bench train --presets "$p" --warmup 2 --steps 5 --precision "$prec")
      echo "$out"
      ours=$(echo "$out" | awk -v p="$p" '$1 == p { print $5 }')
      line="round $round  $p  $prec: moe $ours tok/s"
      if [ "$torch" = 1 ]; then
        bf16=$([ "$prec" = bf16 ] && echo 1 || echo 0)
        theirs=$( (cd "$dir" && python3 "$peer" --impl hf --cfg "${p#bench-}" --warmup 2 --steps 5 --bf16 "$bf16") | tail -1 |
          python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("{tokens_per_s_median:.0f} {peak_rss_mb:.0f} {foreign_cpu_frac_median:.2f}".format(**d))')
        read -r tps rss foreign <<< "$theirs"
        echo "torch hf ${p#bench-} bf16=$bf16: $tps tok/s  peak RSS $rss MB  foreign cpu $foreign"
        line+=", PyTorch $tps tok/s ($(python3 -c "print(f'{$ours / $tps:.2f}')")x)"
      fi
      summary+=("$line")
    done
  done
done
echo
printf '%s\n' "${summary[@]}"
uptime
