#!/usr/bin/env bash
# Prefill and decode speed of moe against llama.cpp on the same GGUF files (bf16, Q8_0, Q4_0) of a
# random-weight Mixtral-shaped model, 2 threads, with `moe bench infer`.
#   bash scripts/bench_infer.sh [WORKDIR]     # from the project root; default WORKDIR /tmp/moe-bench-infer
# Needs python3 with numpy, torch, transformers and cmake (pip), and a C++ compiler. llama.cpp is built
# from the source that llama-cpp-python's PyPI sdist carries (vendor/llama.cpp), with AMX
# disabled (its AMX kernels die with SIGILL on this CPU, GUIDE section 6). Nothing is committed
# from it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=${1:-/tmp/moe-bench-infer}
mkdir -p "$work"
uptime
cargo build --release --quiet
src="$work/llama_cpp_python"
if [ ! -x "$src/build/bin/llama-bench" ]; then
  python3 - "$work" <<'EOF'
import json, sys, tarfile, urllib.request
work = sys.argv[1]
d = json.load(urllib.request.urlopen("https://pypi.org/pypi/llama-cpp-python/json", timeout=60))
sdist = next(f for f in d["urls"] if f["packagetype"] == "sdist")
path = sdist["url"].split("/packages/", 1)[1]
urllib.request.urlretrieve("https://files.pythonhosted.org/packages/" + path, f"{work}/llama.tar.gz")
with tarfile.open(f"{work}/llama.tar.gz") as t:
    top = t.getnames()[0].split("/")[0]
    t.extractall(work, filter="data")
import os
os.replace(f"{work}/{top}/vendor/llama.cpp", f"{work}/llama_cpp_python")
EOF
  flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  cmake -S "$src" -B "$src/build" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" > "$work/cmake.log"
  cmake --build "$src/build" --target llama-bench llama-quantize -j 2 > "$work/build.log"
fi

pip install -q "$src/gguf-py"
for arch in mixtral olmoe; do
  model="$work/$arch-1b"
  gguf="$work/$arch-1b-bf16.gguf"
  [ -f "$model/config.json" ] || python3 scripts/make_checkpoint.py --arch "$arch" --out "$model"
  if [ ! -f "$work/$arch-1b-q4_0.gguf" ]; then
    python3 scripts/llama_convert.py "$src" "$model" "$gguf" bf16 > "$work/convert.log" 2>&1
    python3 scripts/llama_convert.py "$src" "$model" "$work/$arch-1b-q8_0.gguf" q8_0 >> "$work/convert.log" 2>&1
    "$src/build/bin/llama-quantize" "$gguf" "$work/$arch-1b-q4_0.gguf" Q4_0 > "$work/quantize.log" 2>&1
  fi
done

# Both engines on the same GGUF files, in the same run: prefill of 512 tokens and decoding of 64,
# 2 threads, 3 repetitions (medians for moe, means for llama-bench).
for arch in mixtral olmoe; do
  for q in bf16 q8_0 q4_0; do
    echo "== $arch $q"
    "$root/target/release/moe" bench infer --model "$work/$arch-1b-$q.gguf" --llama-bench "$src/build/bin/llama-bench"
  done
done
uptime
