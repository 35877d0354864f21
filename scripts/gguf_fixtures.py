"""GGUF fixtures for crates/moe-infer/tests/gguf.rs, written by llama.cpp's own converter.

The tiny Hugging Face checkpoints of scripts/hf_checkpoints.py (Mixtral, Qwen3-MoE, OLMoE,
GraniteMoE, DeepSeek-V3)
go through llama.cpp's convert_hf_to_gguf.py (scripts/llama_convert.py) in f32 (and Mixtral
also in Q8_0); a Q4_0
copy of the Mixtral file is made the way llama-quantize does (every 2-D weight whose rows are
whole blocks of 32, except the router) with gguf-py's reference quantiser. The tests compare
the logits of each GGUF file with transformers' logits stored in the Hugging Face fixture.

k-quants need rows of 256, so a Mixtral of width 256 (one layer, random transformers init,
the fixture tokenizer) is converted to f32 and quantised by llama.cpp's llama-quantize to Q4_K_M
(Q4_K and Q6_K tensors) and Q5_K_M (Q5_K and Q6_K); gguf-py's reference dequantiser writes the
first two rows of every k-quant tensor to kquant_rows.safetensors for the tests.

Run by hand, never by CI (needs torch, transformers and a llama.cpp source tree with
llama-quantize built, e.g. the one in llama-cpp-python's PyPI sdist, vendor/llama.cpp):
    python3 scripts/gguf_fixtures.py LLAMA_CPP_DIR [LLAMA_QUANTIZE]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.join(here, "..", "crates", "moe-infer", "tests", "fixtures")
out_dir = os.path.join(fixtures, "gguf")
llama = os.path.abspath(sys.argv[1])
from llama_convert import convert  # noqa: E402

os.makedirs(out_dir, exist_ok=True)
# (The Qwen2-MoE fixture has a dense layer, which llama.cpp's qwen2moe cannot convert.)
for name, outtype in [("mixtral", "f32"), ("mixtral", "q8_0"), ("qwen3_moe", "f32"), ("olmoe", "f32"),
                      ("granitemoe", "f32")]:
    out = os.path.join(out_dir, f"{name}-{outtype}.gguf")
    convert(llama, os.path.join(fixtures, name), out, outtype)
    print("wrote", out)

# DeepSeek-V3: released checkpoints' config.json says scoring_func "sigmoid", from which the
# converter writes deepseek2.expert_gating_func; the tiny fixture's config lacks it, so a copy
# with it added is converted (llama.cpp reads a deepseek2 file without it as V2 softmax routing).
with tempfile.TemporaryDirectory() as tmp:
    ds = os.path.join(tmp, "deepseek_v3")
    shutil.copytree(os.path.join(fixtures, "deepseek_v3"), ds)
    with open(os.path.join(ds, "config.json")) as f:
        cfg = json.load(f)
    cfg["scoring_func"] = "sigmoid"
    with open(os.path.join(ds, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    out = os.path.join(out_dir, "deepseek_v3-f32.gguf")
    convert(llama, ds, out, "f32")
    print("wrote", out)

import gguf  # noqa: E402  (llama.cpp's gguf-py, on the path since the first conversion)

# Q4_0 as llama-quantize makes it, from the f32 file.
src = gguf.GGUFReader(os.path.join(out_dir, "mixtral-f32.gguf"))
arch = src.fields["general.architecture"].contents()
w = gguf.GGUFWriter(os.path.join(out_dir, "mixtral-q4_0.gguf"), arch)
for field in src.fields.values():
    if field.name.startswith("GGUF.") or field.name == "general.architecture":
        continue
    vtype = field.types[0]
    sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
    w.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
for t in src.tensors:
    data = np.array(t.data)
    shape = [int(x) for x in reversed(t.shape)]
    if data.ndim >= 2 and shape[-1] % 32 == 0 and "ffn_gate_inp" not in t.name:
        q = gguf.quants.quantize(data.reshape(shape).astype(np.float32), gguf.GGMLQuantizationType.Q4_0)
        w.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    else:
        w.add_tensor(t.name, data.reshape(shape).astype(np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("wrote", os.path.join(out_dir, "mixtral-q4_0.gguf"))

# k-quants: a width-256 Mixtral through llama-quantize.

from mixtral256 import mixtral256_f32  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

quantize = sys.argv[2] if len(sys.argv) > 2 else os.path.join(llama, "build", "bin", "llama-quantize")
with tempfile.TemporaryDirectory() as tmp:
    f32 = mixtral256_f32(llama, tmp)
    rows = {}
    for kind in ["Q4_K_M", "Q5_K_M"]:
        out = os.path.join(out_dir, f"mixtral256-{kind.lower()}.gguf")
        subprocess.run([quantize, f32, out, kind], check=True, capture_output=True)
        print("wrote", out)
        for t in gguf.GGUFReader(out).tensors:
            if t.tensor_type.name in ("Q4_K", "Q5_K", "Q6_K"):
                values = gguf.quants.dequantize(t.data, t.tensor_type)
                cols = int(t.shape[0])
                rows[f"{kind}/{t.name}"] = np.ascontiguousarray(values.reshape(-1, cols)[:2].astype(np.float32))
    save_file(rows, os.path.join(out_dir, "kquant_rows.safetensors"))
    print("wrote", os.path.join(out_dir, "kquant_rows.safetensors"), len(rows), "tensors")
