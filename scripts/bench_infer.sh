#!/usr/bin/env bash
# Decode speed of moe against llama.cpp on the same random-weight Mixtral-shaped model (2 threads).
#   bash scripts/bench_infer.sh [WORKDIR]     # from the project root; default WORKDIR /tmp/moe-bench-infer
# Needs python3 with numpy, sentencepiece and cmake (pip), and a C++ compiler. llama.cpp is built
# from the source that llama-cpp-python's PyPI sdist carries (vendor/llama.cpp), with AMX
# disabled (its AMX kernels die with SIGILL on this CPU, GUIDE section 6). Nothing is committed
# from it. GGUF conversion needs a SentencePiece tokenizer, so one is trained on the Rust book.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=${1:-/tmp/moe-bench-infer}
mkdir -p "$work"
model="$work/mixtral-1b"
uptime
cargo build --release --quiet
[ -f "$model/config.json" ] || python3 scripts/make_checkpoint.py --arch mixtral --out "$model"

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

gguf="$work/mixtral-1b-bf16.gguf"
if [ ! -f "$gguf" ]; then
  pip install -q "$src/gguf-py" sentencepiece
  conv="$work/convert-src"
  mkdir -p "$conv"
  cp "$model"/config.json "$model"/*.safetensors "$model"/model.safetensors.index.json "$conv/"
  python3 - "$conv" <<'EOF'
import glob, os, re, sys, sentencepiece as spm
books = glob.glob(os.path.expanduser("~/.rustup/toolchains/*/share/doc/rust/html/book/print.html"))
text = re.sub(r"<[^>]+>", " ", open(books[0], errors="ignore").read())[:3_000_000] if books else "the router " * 50000
open(f"{sys.argv[1]}/sp.txt", "w").write(text)
spm.SentencePieceTrainer.train(input=f"{sys.argv[1]}/sp.txt", model_prefix=f"{sys.argv[1]}/tokenizer",
                               vocab_size=2000, model_type="bpe", byte_fallback=True, minloglevel=2)
EOF
  python3 "$src/convert_hf_to_gguf.py" "$conv" --outtype bf16 --outfile "$gguf" > "$work/convert.log" 2>&1
  "$src/build/bin/llama-quantize" "$gguf" "$work/mixtral-1b-q8_0.gguf" Q8_0 > "$work/quantize.log" 2>&1
fi

echo "== llama.cpp (llama-bench, 2 threads, decode of 64 tokens, 3 repetitions)"
for q in bf16 q8_0; do
  "$src/build/bin/llama-bench" -m "$work/mixtral-1b-$q.gguf" -t 2 -p 0 -n 64 -r 3 -o md 2>/dev/null | grep -E "^\|" | tail -1
done
echo "== moe (moe generate, 64 new tokens, twice)"
for q in "" "--quant q8_0"; do
  for i in 1 2; do
    # shellcheck disable=SC2086
    "$root/target/release/moe" generate --model "$model" --prompt "the router" --max-tokens 64 \
      --temperature 1.0 --seed 3 $q 2>&1 >/dev/null | grep "new tokens" | sed "s/^/moe ${q:-bf16}: /"
  done
done
uptime
