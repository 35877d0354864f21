"""Block-format fixtures for crates/moe-infer/tests/quants.rs: raw blocks and the values gguf-py's
reference dequantiser (gguf.quants.dequantize, the numpy twin of ggml's dequantize_row_*) gives
them, for every format of crates/moe-infer/src/quants.rs.

- random.safetensors: 8 blocks of 256 values per format, random bytes (every bit pattern of the
  packed scales and values) with finite f16 scale fields. Needs numpy, safetensors and gguf (pip).
- llama_quantize.safetensors (with LLAMA_CPP_DIR): rows made by llama.cpp's llama-quantize from a
  width-256 Mixtral (scripts/mixtral256.py) with each common preset (Q2_K, Q3_K_M, Q4_0, Q4_1,
  Q5_0, Q5_1, Q4_K_M, Q5_K_M, Q6_K, Q8_0, IQ4_NL, IQ4_XS): the first two rows of every quantised
  tensor. Needs torch and transformers too, and llama-quantize built (scripts/llama_setup.sh).

Each tensor pair is NAME.bytes (U8) and NAME.values (F32). Run by hand, never by CI:
    python3 scripts/quant_fixtures.py [LLAMA_CPP_DIR]
"""
import os
import subprocess
import sys
import tempfile

import gguf
import numpy as np
from safetensors.numpy import save_file

here = os.path.dirname(os.path.abspath(__file__))
out_dir = os.path.join(here, "..", "crates", "moe-infer", "tests", "fixtures", "quants")
os.makedirs(out_dir, exist_ok=True)
T = gguf.GGMLQuantizationType

# format -> byte offsets of its f16 fields within a block (ggml's block_* structs)
F16_FIELDS = {
    "Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "IQ4_NL": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_XS": [0],
}

rng = np.random.default_rng(0)
tensors = {}
for name, offsets in F16_FIELDS.items():
    qtype = T[name]
    values_per_block, bytes_per_block = gguf.GGML_QUANT_SIZES[qtype]
    blocks = 8 * 256 // values_per_block
    raw = rng.integers(0, 256, size=(blocks, bytes_per_block), dtype=np.uint8)
    for off in offsets:
        scale = (rng.uniform(0.001, 0.1, size=blocks) * rng.choice([-1, 1], size=blocks)).astype(np.float16)
        raw[:, off:off + 2] = scale.view(np.uint8).reshape(blocks, 2)
    values = gguf.quants.dequantize(raw.reshape(-1), qtype).astype(np.float32)
    assert np.isfinite(values).all(), name
    tensors[f"{name}.bytes"] = np.ascontiguousarray(raw.reshape(-1))
    tensors[f"{name}.values"] = np.ascontiguousarray(values.reshape(-1))
save_file(tensors, os.path.join(out_dir, "random.safetensors"))
print("wrote random.safetensors:", len(tensors) // 2, "formats")

if len(sys.argv) > 1:
    from mixtral256 import mixtral256_f32

    llama = os.path.abspath(sys.argv[1])
    quantize = os.path.join(llama, "build", "bin", "llama-quantize")
    presets = ["Q2_K", "Q3_K_M", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_NL",
               "IQ4_XS"]
    rows, seen = {}, set()
    with tempfile.TemporaryDirectory() as tmp:
        f32 = mixtral256_f32(llama, tmp)
        for preset in presets:
            out = os.path.join(tmp, f"{preset}.gguf")
            subprocess.run([quantize, f32, out, preset], check=True, capture_output=True)
            for t in gguf.GGUFReader(out).tensors:
                if t.tensor_type.name not in F16_FIELDS:
                    continue
                seen.add(t.tensor_type.name)
                cols = int(t.shape[0])
                _, bytes_per_block = gguf.GGML_QUANT_SIZES[t.tensor_type]
                values_per_block = gguf.GGML_QUANT_SIZES[t.tensor_type][0]
                row_bytes = cols // values_per_block * bytes_per_block
                raw = np.asarray(t.data).reshape(-1).view(np.uint8)[:2 * row_bytes]
                values = gguf.quants.dequantize(raw, t.tensor_type).astype(np.float32)
                key = f"{preset}/{t.name}/{t.tensor_type.name}"
                rows[f"{key}.bytes"] = np.ascontiguousarray(raw)
                rows[f"{key}.values"] = np.ascontiguousarray(values.reshape(-1))
    save_file(rows, os.path.join(out_dir, "llama_quantize.safetensors"))
    print("wrote llama_quantize.safetensors:", len(rows) // 2, "rows pairs; formats", sorted(seen))
