#!/usr/bin/env bash
# Live expert rebalancing under mpirun (RESULTS.md, "Live rebalancing"): the default 8x2 model,
# 100 steps of a global batch of 16 x 128 tokens, experts contiguous vs re-placed every 10 steps
# (moved only, and with replicas of hot experts), with and without the Switch loss.
#   bash scripts/live_rebalance.sh [WORKDIR]    # from the project root; default /tmp/moe-rebalance
# Needs Open MPI (apt install libopenmpi-dev openmpi-bin libclang-dev). About 15 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/moe-rebalance}
mkdir -p "$work"
uptime
cargo build --release --quiet --features mpi --target-dir target/mpi
moe=target/mpi/release/moe
export RAYON_NUM_THREADS=1   # one thread per rank: 2 ranks fill the 2 cores
common=(train --steps 100 --eval-every 0 --eval-batches 2 --checkpoint-every 0 --log-every 1 --sample-tokens 0 --quiet --data rust-books)
run() { # name ranks extra flags...
  local name=$1 np=$2; shift 2
  rm -rf "${work:?}/$name"
  mpirun --allow-run-as-root --oversubscribe -np "$np" "$moe" "${common[@]}" --batch-size $((16 / np)) \
    --out "$work/$name" --expert-parallel "$np" "$@" 2>&1 | grep "re-placed" | sed "s/^/$name: /" || true
}
for aux in default 0; do
  flags=(); [ "$aux" = 0 ] && flags=(--aux-loss-coef 0)
  run "np2-contig-aux$aux" 2 "${flags[@]}"
  run "np2-rep2-aux$aux" 2 "${flags[@]}" --rebalance-every 10 --redundant-experts 2
  run "np4-contig-aux$aux" 4 "${flags[@]}"
  run "np4-moved-aux$aux" 4 "${flags[@]}" --rebalance-every 10
  run "np4-rep4-aux$aux" 4 "${flags[@]}" --rebalance-every 10 --redundant-experts 4
done
python3 - "$work" <<'PY'
import json, statistics as st, sys
work = sys.argv[1]
print("| ranks | Switch loss | placement | max/mean expert rows per rank | all-to-all s per rank and step | median step s | final train loss |")
print("|---:|---|---|---:|---:|---:|---:|")
for aux in ["default", "0"]:
    for np_, name, label in [(2, "contig", "contiguous"), (2, "rep2", "re-placed, 2 replicas"),
                             (4, "contig", "contiguous"), (4, "moved", "re-placed, moved only"),
                             (4, "rep4", "re-placed, 4 replicas")]:
        ms = [json.loads(l)["m"] for l in open(f"{work}/np{np_}-{name}-aux{aux}/metrics.jsonl") if '"train"' in l]
        tail = [m for m in ms if m["step"] > 10]
        mm = st.mean(max(m["rank_rows"]) / st.mean(m["rank_rows"]) for m in tail)
        a2a = st.mean(st.mean(m["rank_comm_s"]) for m in tail)
        step = st.median(16 * 128 / m["tokens_per_s"] for m in tail)
        coef = "on (0.01)" if aux == "default" else "off"
        print(f"| {np_} | {coef} | {label} | {mm:.2f} | {a2a:.3f} | {step:.3f} | {ms[-1]['ce']:.4f} |")
PY
"$moe" plot --runs "$work/np4-contig-aux0" "$work/np4-moved-aux0" "$work/np4-rep4-aux0" \
  --labels contiguous moved "moved + 4 replicas" --out results/rebalance
uptime
