#!/usr/bin/env python3
"""Writes tiny random-weight Hugging Face checkpoints of every supported architecture, with the
reference outputs of transformers, into crates/moe-infer/tests/fixtures/<name>/ (run by hand, not by CI).

Each directory is what a user gets from the hub: config.json, the weights as written by
save_pretrained (some sharded with model.safetensors.index.json, in float32, float16 or bfloat16),
tokenizer.json and tokenizer_config.json with a chat template. reference.safetensors holds:
  input_ids     [T] int64, a prompt encoded by the tokenizer
  logits        [T, vocab] float32, transformers' logits for every position
  greedy        [8] int64, transformers' greedy generation (model.generate, do_sample=False, no EOS stop)
  chat_ids      [n] int64, apply_chat_template(CHAT, add_generation_prompt=True) token ids
The reference runs in float32 on the weights as stored (bf16/f16 weights are upcast), so our f32
engine must match it to 1e-4.

    pip install torch transformers safetensors tokenizers
    python scripts/hf_checkpoints.py [NAME ...] # from the project root; default: every one
"""
import copy
import json
import os
import shutil

import torch
import transformers as tf
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "moe-infer", "tests", "fixtures")
VOCAB = 128
TEXT = (
    "the quick brown fox jumps over the lazy dog. a mixture of experts sends each token to a few experts. "
    "the router picks the top experts and the model adds their outputs. experts are small feed forward blocks. "
)
PROMPT = "the router sends a token to the experts"
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is a router"}]
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# name: (config class, model class, config overrides, stored dtype, max shard size or None)
ARCHS = {
    "mixtral": (tf.MixtralConfig, tf.MixtralForCausalLM,
                dict(intermediate_size=24, num_local_experts=4, num_experts_per_tok=2), torch.bfloat16, "20KB"),
    "qwen2_moe": (tf.Qwen2MoeConfig, tf.Qwen2MoeForCausalLM,
                  dict(num_hidden_layers=3, intermediate_size=40, moe_intermediate_size=24, num_experts=4,
                       num_experts_per_tok=2, shared_expert_intermediate_size=32, mlp_only_layers=[1],
                       norm_topk_prob=False), torch.float16, None),
    "qwen3_moe": (tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM,
                  dict(intermediate_size=40, moe_intermediate_size=24, num_experts=4, num_experts_per_tok=2,
                       head_dim=16, norm_topk_prob=True, tie_word_embeddings=True), torch.float32, None),
    "olmoe": (tf.OlmoeConfig, tf.OlmoeForCausalLM,
              dict(intermediate_size=24, num_experts=4, num_experts_per_tok=2, clip_qkv=0.8), torch.float32, None),
    "deepseek_v3": (tf.DeepseekV3Config, tf.DeepseekV3ForCausalLM,
                    dict(num_hidden_layers=3, num_key_value_heads=4, intermediate_size=40, moe_intermediate_size=24,
                         n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1,
                         n_shared_experts=1, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                         qk_rope_head_dim=4, v_head_dim=12, routed_scaling_factor=2.5, rope_interleave=True,
                         rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                          "original_max_position_embeddings": 16, "beta_fast": 32.0,
                                          "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}),
                    torch.bfloat16, None),
    # DeepSeek-V3 for fine-tuning through the training engine: no RoPE scaling, a plain q_proj, and
    # a config eps other than the latent norms' 1e-6
    "deepseek_v3_plain": (tf.DeepseekV3Config, tf.DeepseekV3ForCausalLM,
                          dict(num_hidden_layers=3, num_key_value_heads=4, intermediate_size=40,
                               moe_intermediate_size=24, n_routed_experts=8, num_experts_per_tok=2, n_group=4,
                               topk_group=2, first_k_dense_replace=1, n_shared_experts=1, q_lora_rank=None,
                               kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=12,
                               routed_scaling_factor=2.5, rope_interleave=True, rms_norm_eps=1e-5),
                          torch.bfloat16, None),
    "granitemoe": (tf.GraniteMoeConfig, tf.GraniteMoeForCausalLM,
                   dict(intermediate_size=24, num_local_experts=4, num_experts_per_tok=2, embedding_multiplier=2.0,
                        attention_multiplier=0.3, residual_multiplier=0.5, logits_scaling=4.0), torch.float32, None),
    "phimoe": (tf.PhimoeConfig, tf.PhimoeForCausalLM,
               dict(intermediate_size=24, num_local_experts=4, num_experts_per_tok=2, attention_bias=True,
                    lm_head_bias=True, router_jitter_noise=0.3,
                    rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                     "original_max_position_embeddings": 12,
                                     "short_mscale": 1.1, "long_mscale": 1.3, "short_factor": [1.0, 1.2, 1.5, 2.0], "long_factor": [1.0, 2.0, 4.0, 8.0]}),
               torch.float32, None),
    # dense checkpoints for `moe upcycle --from DIR` (read by the training engine)
    "llama_dense": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(intermediate_size=48), torch.bfloat16, None),
    # Llama 3.1's RoPE scaling (rope_type llama3), for fine-tuning and upcycling
    "llama3_dense": (tf.LlamaConfig, tf.LlamaForCausalLM,
                     dict(intermediate_size=48, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                                 "factor": 8.0, "low_freq_factor": 1.0,
                                                                 "high_freq_factor": 4.0,
                                                                 "original_max_position_embeddings": 16}),
                     torch.bfloat16, None),
    "mistral_dense": (tf.MistralConfig, tf.MistralForCausalLM,
                      dict(intermediate_size=48, tie_word_embeddings=True, sliding_window=32), torch.float16, None),
    # OLMoE as released (no clip_qkv), for fine-tuning through the training engine
    "olmoe_noclip": (tf.OlmoeConfig, tf.OlmoeForCausalLM, dict(intermediate_size=24, num_experts=4, num_experts_per_tok=2),
                     torch.bfloat16, None),
    "qwen2_dense": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(intermediate_size=48, tie_word_embeddings=True),
                    torch.float32, None),
    "gpt_oss": (tf.GptOssConfig, tf.GptOssForCausalLM,
                dict(intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, head_dim=8, sliding_window=4,
                     layer_types=["sliding_attention", "full_attention"]), torch.bfloat16, None),
}


def tokenizer(out):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator([TEXT] * 4, trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=SPECIALS))
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                      pad_token="<unk>")
    fast.chat_template = TEMPLATE
    fast.save_pretrained(out)
    return fast


def randomize(model):
    """Every parameter random (norm weights near 1), so no path is hidden by zeros or ones."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not p.is_floating_point() or "inv_freq" in name:
                continue
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def build(name):
    cfg_cls, model_cls, extra, dtype, shard = ARCHS[name]
    out = os.path.join(OUT, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    tok = tokenizer(out)
    cfg = cfg_cls(**{**COMMON, **extra})
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = model_cls(cfg).eval()
    randomize(model)
    with torch.no_grad():  # round the weights to the stored dtype; buffers (rope frequencies) stay exact
        for p in model.parameters():
            p.copy_(p.to(dtype).float())
        for n, b in model.named_buffers():
            if "e_score_correction_bias" in n:
                b.copy_(b.to(dtype).float())
    kw = {"max_shard_size": shard} if shard else {}
    copy.deepcopy(model).to(dtype).save_pretrained(out, **kw)
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")
    reference(model, tok, out)
    return model, out


def tokenizer_of(out):
    return tf.PreTrainedTokenizerFast.from_pretrained(out)


def reference(model, tok, out):
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
        gen = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=None,
                             pad_token_id=0, suppress_tokens=None)[0, ids.shape[1]:]
    chat = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    ref = {"input_ids": ids[0].to(torch.int64), "logits": logits.contiguous(), "greedy": gen.to(torch.int64),
           "chat_ids": torch.tensor(chat, dtype=torch.int64)}
    save_file(ref, os.path.join(out, "reference.safetensors"))
    print(f"{out}: {len(ids[0])} tokens, greedy {gen.tolist()}, files {sorted(os.listdir(out))}")


def fused_mixtral():
    """Mixtral with transformers' in-memory 3-D expert tensors (gate_up_proj [E, 2I, H], down_proj
    [E, H, I]) instead of the hub's per-expert w1/w2/w3: the fused layout some exporters write."""
    model, src = build("mixtral")
    out = os.path.join(OUT, "mixtral_fused")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for f in os.listdir(src):
        if not f.startswith("model"):
            shutil.copy(os.path.join(src, f), out)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert any(k.endswith("experts.gate_up_proj") for k in state), sorted(state)[:20]
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    print(f"mixtral_fused: {sorted(k for k in state if 'layers.0.' in k)}")


def mxfp4_quantize(w):
    """[..., rows, cols] float -> (blocks [..., rows, cols/32, 16] uint8, scales [..., rows, cols/32] uint8):
    OCP MXFP4, one power-of-two scale (E8M0, bias 127) per 32 values, two E2M1 codes per byte, low nibble first."""
    from transformers.integrations.mxfp4 import FP4_VALUES
    lut = torch.tensor(FP4_VALUES[:8])
    x = w.float().reshape(*w.shape[:-1], w.shape[-1] // 32, 32)
    amax = x.abs().amax(-1, keepdim=True).clamp(min=1e-30)
    exp = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
    mag = (x.abs() / torch.exp2(exp)).unsqueeze(-1)
    code = (mag - lut).abs().argmin(-1) + 8 * (x < 0).long()
    packed = (code[..., 0::2] | (code[..., 1::2] << 4)).to(torch.uint8)
    return packed, (exp.squeeze(-1) + 127).to(torch.uint8)


def gpt_oss_mxfp4():
    """gpt-oss as OpenAI ships it: expert matrices in MXFP4 blocks (gate_up_proj_blocks/_scales, [E, out, ...]);
    the reference model uses transformers' own dequantisation of the same blocks."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    model, src = build("gpt_oss")
    out = os.path.join(OUT, "gpt_oss_mxfp4")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for f in os.listdir(src):
        if not f.startswith("model") and f != "reference.safetensors":
            shutil.copy(os.path.join(src, f), out)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for proj in ("gate_up_proj", "down_proj"):
                p = getattr(layer.mlp.experts, proj)  # [E, in, out]
                blocks, scales = mxfp4_quantize(p.transpose(1, 2))
                deq = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [E, in, out]
                p.copy_(deq)
                key = f"model.layers.{i}.mlp.experts.{proj}"
                del state[key]
                state[key + "_blocks"], state[key + "_scales"] = blocks, scales
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn",
                                  "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    reference(model, tokenizer_of(out), out)
    print("gpt_oss_mxfp4: written")


def legacy_chat_template(name):
    """Older hub repositories keep the chat template inside tokenizer_config.json: test that form too."""
    out = os.path.join(OUT, name)
    cfg = json.load(open(os.path.join(out, "tokenizer_config.json")))
    cfg["chat_template"] = open(os.path.join(out, "chat_template.jinja")).read()
    json.dump(cfg, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2)
    os.remove(os.path.join(out, "chat_template.jinja"))


if __name__ == "__main__":
    import sys
    if len(sys.argv) > 1:  # python scripts/hf_checkpoints.py NAME ...: only those
        for arch in sys.argv[1:]:
            build(arch)
        sys.exit(0)
    for arch in ARCHS:
        if arch not in ("mixtral", "gpt_oss"):
            build(arch)
    fused_mixtral()
    gpt_oss_mxfp4()
    legacy_chat_template("qwen2_moe")
