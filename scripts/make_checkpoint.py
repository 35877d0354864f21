#!/usr/bin/env python3
"""Writes a large random-weight Hugging Face MoE checkpoint (hub layout: config.json, sharded
safetensors with model.safetensors.index.json, tokenizer files) for memory and speed
measurements. Needs only numpy; tensors are generated and written a chunk at a time, so the
script itself stays small in memory.

    python scripts/make_checkpoint.py --arch mixtral --out /tmp/mixtral-1b          # ~1.1B params, bf16, 2.3 GB
    python scripts/make_checkpoint.py --arch olmoe --out /tmp/olmoe-1b --dtype f16

Shapes (about 1B total parameters each):
  mixtral  hidden 1024, 12 layers, 16 heads / 4 kv heads, 8 experts top-2 of width 3584, vocab 32000
  olmoe    hidden 1024, 12 layers, 16 heads, 64 experts top-8 of width 448, q/k norm, vocab 50304
The tokenizer is the tiny fixture tokenizer (ids stay below the vocabulary); text output is noise.
"""
import argparse
import json
import os
import shutil

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(ROOT, "crates", "moe-infer", "tests", "fixtures")

SHAPES = {
    "mixtral": dict(
        architectures=["MixtralForCausalLM"], model_type="mixtral", hidden_size=1024, num_hidden_layers=12,
        num_attention_heads=16, num_key_value_heads=4, intermediate_size=3584, num_local_experts=8,
        num_experts_per_tok=2, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_theta=1e6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, hidden_act="silu"),
    "olmoe": dict(
        architectures=["OlmoeForCausalLM"], model_type="olmoe", hidden_size=1024, num_hidden_layers=12,
        num_attention_heads=16, num_key_value_heads=16, intermediate_size=448, num_experts=64,
        num_experts_per_tok=8, vocab_size=50304, max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, norm_topk_prob=False, clip_qkv=None, bos_token_id=1,
        eos_token_id=2, hidden_act="silu"),
}
DTYPES = {"bf16": ("BF16", 2), "f16": ("F16", 2), "f32": ("F32", 4)}


def tensors(c):
    """(name, shape, is_norm) in hub order."""
    h, v = c["hidden_size"], c["vocab_size"]
    hd = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (v, h), False)]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", (h,), True), (p + "post_attention_layernorm.weight", (h,), True)]
        out += [(p + "self_attn.q_proj.weight", (h, h), False), (p + "self_attn.k_proj.weight", (kv, h), False),
                (p + "self_attn.v_proj.weight", (kv, h), False), (p + "self_attn.o_proj.weight", (h, h), False)]
        if c["model_type"] == "olmoe":
            out += [(p + "self_attn.q_norm.weight", (h,), True), (p + "self_attn.k_norm.weight", (kv,), True)]
            blk, names, n = p + "mlp.", ("gate_proj", "up_proj", "down_proj"), c["num_experts"]
        else:
            blk, names, n = p + "block_sparse_moe.", ("w1", "w3", "w2"), c["num_local_experts"]
        i = c["intermediate_size"]
        out.append((blk + "gate.weight", (n, h), False))
        for e in range(n):
            out += [(f"{blk}experts.{e}.{names[0]}.weight", (i, h), False),
                    (f"{blk}experts.{e}.{names[1]}.weight", (i, h), False),
                    (f"{blk}experts.{e}.{names[2]}.weight", (h, i), False)]
    out += [("model.norm.weight", (h,), True), ("lm_head.weight", (v, h), False)]
    return out


def encode(x, dtype):
    if dtype == "f32":
        return x.astype("<f4").tobytes()
    if dtype == "f16":
        return x.astype("<f2").tobytes()
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes()  # round to nearest even


def write_shard(path, items, dtype, rng):
    tag, size = DTYPES[dtype]
    header, off = {}, 0
    for name, shape, _ in items:
        n = int(np.prod(shape)) * size
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for name, shape, norm in items:
            n = int(np.prod(shape))
            for s in range(0, n, 1 << 24):
                m = min(1 << 24, n - s)
                x = np.ones(m, np.float32) if norm else rng.standard_normal(m, dtype=np.float32) * 0.02
                f.write(encode(x, dtype))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=SHAPES, default="mixtral")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=DTYPES, default="bf16")
    ap.add_argument("--shard-gb", type=float, default=1.0)
    a = ap.parse_args()
    cfg = SHAPES[a.arch]
    os.makedirs(a.out, exist_ok=True)
    json.dump(cfg, open(os.path.join(a.out, "config.json"), "w"), indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(FIXTURES, "mixtral", f), a.out)
    size = DTYPES[a.dtype][1]
    items = tensors(cfg)
    shards, cur, cur_bytes = [], [], 0
    for it in items:
        b = int(np.prod(it[1])) * size
        if cur and cur_bytes + b > a.shard_gb * 1e9:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(it)
        cur_bytes += b
    shards.append(cur)
    rng = np.random.default_rng(0)
    weight_map, total = {}, 0
    for k, items_k in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_shard(os.path.join(a.out, name), items_k, a.dtype, rng)
        for n, shape, _ in items_k:
            weight_map[n] = name
            total += int(np.prod(shape))
        print(f"wrote {name}")
    json.dump({"metadata": {"total_size": total * size}, "weight_map": weight_map},
              open(os.path.join(a.out, "model.safetensors.index.json"), "w"), indent=2)
    print(f"{a.out}: {total / 1e9:.2f}B parameters, {total * size / 1e9:.2f} GB ({a.dtype})")


if __name__ == "__main__":
    main()
