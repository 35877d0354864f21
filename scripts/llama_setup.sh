#!/usr/bin/env bash
# Builds the llama.cpp peer and the benchmark GGUF files that scripts/bench_infer.sh and
# scripts/bench_serve.sh share (re-runnable: finished parts are skipped).
#   source scripts/llama_setup.sh WORKDIR      # sets $src (llama.cpp tree with build/bin)
# llama.cpp comes from llama-cpp-python's PyPI sdist (vendor/llama.cpp), built with AMX disabled
# (its AMX kernels die with SIGILL on this CPU, GUIDE section 6). The models are random-weight
# Mixtral- and OLMoE-shaped 1 B checkpoints (scripts/make_checkpoint.py) in bf16, Q8_0, Q4_0 and
# the k-quant presets people download (Q4_K_M, Q5_K_M, Q3_K_M, IQ4_XS) made by llama-quantize.
# The Python packages the converter and the checkpoint maker need are installed with pip.
set -euo pipefail
work=$1
mkdir -p "$work"
python3 -c "import numpy, torch, transformers, safetensors, sentencepiece" 2>/dev/null ||
  python3 -m pip install -q numpy torch transformers safetensors sentencepiece
command -v cmake > /dev/null || python3 -m pip install -q cmake
src="$work/llama_cpp_python"
if [ ! -f "$src/CMakeLists.txt" ]; then
  python3 - "$work" <<'PY'
import json, os, sys, tarfile, urllib.request
work = sys.argv[1]
d = json.load(urllib.request.urlopen("https://pypi.org/pypi/llama-cpp-python/json", timeout=60))
sdist = next(f for f in d["urls"] if f["packagetype"] == "sdist")
path = sdist["url"].split("/packages/", 1)[1]
urllib.request.urlretrieve("https://files.pythonhosted.org/packages/" + path, f"{work}/llama.tar.gz")
with tarfile.open(f"{work}/llama.tar.gz") as t:
    top = t.getnames()[0].split("/")[0]
    t.extractall(work, filter="data")
os.replace(f"{work}/{top}/vendor/llama.cpp", f"{work}/llama_cpp_python")
PY
fi
if [ ! -x "$src/build/bin/llama-server" ] || [ ! -x "$src/build/bin/llama-bench" ]; then
  flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  cmake -S "$src" -B "$src/build" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" > "$work/cmake.log"
  cmake --build "$src/build" --target llama-bench llama-quantize llama-server -j 2 > "$work/build.log"
fi
pip install -q "$src/gguf-py"
for arch in mixtral olmoe; do
  model="$work/$arch-1b"
  gguf="$work/$arch-1b-bf16.gguf"
  # the index is written last: a checkpoint without it was interrupted and is made again
  if [ ! -f "$model/model.safetensors.index.json" ]; then
    rm -rf "$model"
    python3 scripts/make_checkpoint.py --arch "$arch" --out "$model"
  fi
  # every file is written as .part and renamed when complete, so an interrupted run redoes it
  [ -f "$gguf" ] || { python3 scripts/llama_convert.py "$src" "$model" "$gguf.part" bf16 > "$work/convert.log" 2>&1 &&
    mv "$gguf.part" "$gguf"; }
  q8="$work/$arch-1b-q8_0.gguf"
  [ -f "$q8" ] || { python3 scripts/llama_convert.py "$src" "$model" "$q8.part" q8_0 >> "$work/convert.log" 2>&1 &&
    mv "$q8.part" "$q8"; }
  for preset in Q4_0 Q4_K_M Q5_K_M Q3_K_M IQ4_XS; do
    out="$work/$arch-1b-$(echo "$preset" | tr 'A-Z' 'a-z').gguf"
    [ -f "$out" ] || "$src/build/bin/llama-quantize" "$gguf" "$out.part" "$preset" >> "$work/quantize.log" 2>&1
    [ -f "$out" ] || mv "$out.part" "$out"
  done
done
