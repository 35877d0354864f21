#!/usr/bin/env python3
"""Writes a DeepSeek-V3-shaped model with random bf16 weights (config.json, model.safetensors)
for the MLA decode benchmark: DeepSeek-V3's attention head sizes (kv rank 512, rope 64, nope 128,
v 128, q rank 384 here) with 16 heads at width 1024, 4 layers (the first dense), 16 routed
experts of width 256 (top-4 in 4 groups, 2 groups per token) plus one shared expert, vocabulary
4096: about 80 M parameters, 160 MB. numpy only.

    python3 scripts/mla_model.py /tmp/mla-v3
    moe bench infer --model /tmp/mla-v3 --depth 4096 --gen-tokens 32
"""
import json
import os
import struct
import sys

import numpy as np

CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "hidden_size": 1024,
    "intermediate_size": 2048,
    "moe_intermediate_size": 256,
    "num_hidden_layers": 4,
    "first_k_dense_replace": 1,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "q_lora_rank": 384,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "qk_head_dim": 192,
    "head_dim": 64,
    "v_head_dim": 128,
    "n_routed_experts": 16,
    "n_shared_experts": 1,
    "num_experts_per_tok": 4,
    "n_group": 4,
    "topk_group": 2,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_interleave": True,
    "tie_word_embeddings": False,
    "vocab_size": 4096,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}


def shapes(c):
    h, v = c["hidden_size"], c["vocab_size"]
    nh, nope, rope, vd = c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    ql, kvl, f, fe = c["q_lora_rank"], c["kv_lora_rank"], c["intermediate_size"], c["moe_intermediate_size"]
    out = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        a = p + "self_attn."
        out[a + "q_a_proj.weight"] = (ql, h)
        out[a + "q_a_layernorm.weight"] = (ql,)
        out[a + "q_b_proj.weight"] = (nh * (nope + rope), ql)
        out[a + "kv_a_proj_with_mqa.weight"] = (kvl + rope, h)
        out[a + "kv_a_layernorm.weight"] = (kvl,)
        out[a + "kv_b_proj.weight"] = (nh * (nope + vd), kvl)
        out[a + "o_proj.weight"] = (h, nh * vd)
        m = p + "mlp."
        if i < c["first_k_dense_replace"]:
            out.update({m + "gate_proj.weight": (f, h), m + "up_proj.weight": (f, h), m + "down_proj.weight": (h, f)})
            continue
        out[m + "gate.weight"] = (c["n_routed_experts"], h)
        out[m + "gate.e_score_correction_bias"] = (c["n_routed_experts"],)
        for e in range(c["n_routed_experts"]):
            x = f"{m}experts.{e}."
            out.update({x + "gate_proj.weight": (fe, h), x + "up_proj.weight": (fe, h), x + "down_proj.weight": (h, fe)})
        fs = fe * c["n_shared_experts"]
        x = m + "shared_experts."
        out.update({x + "gate_proj.weight": (fs, h), x + "up_proj.weight": (fs, h), x + "down_proj.weight": (h, fs)})
    return out


def bf16(a):
    """float32 -> bf16 bits, rounded to nearest even."""
    b = a.astype(np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/mla-v3"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    rng = np.random.default_rng(0)
    header, blobs, off = {}, [], 0
    for name, shape in shapes(CONFIG).items():
        if len(shape) == 1:
            a = np.zeros(shape) if name.endswith("bias") else np.ones(shape)
        else:
            a = rng.standard_normal(shape, dtype=np.float32) * 0.02
        data = bf16(a).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    print(f"{out}: {off / 1e6:.0f} MB of bf16 weights")


if __name__ == "__main__":
    main()
