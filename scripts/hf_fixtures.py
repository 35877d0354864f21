#!/usr/bin/env python3
"""Writes the Hugging Face parity fixtures of tests/fixtures/hf/ (run by hand, not by CI).

For a tiny random MixtralForCausalLM (MoE), LlamaForCausalLM (dense), Qwen2MoeForCausalLM
(shared expert with its sigmoid gate, query/key/value biases, unnormalised top-k), OlmoeForCausalLM
(query/key norms over the whole projections), Qwen3MoeForCausalLM (per-head query/key norms,
heads wider than hidden / heads), GraniteMoeForCausalLM (embedding, attention, residual and logit
multipliers, top-k softmax router), DeepseekV3ForCausalLM (latent attention with a query rank and
interleaved RoPE, a dense first layer, sigmoid group-limited routing with its selection bias,
shared experts; no balancing loss), GptOssForCausalLM (attention sinks, alternating sliding
windows, biases on every projection and expert, the clamped SwiGLU, YaRN), PhimoeForCausalLM in eval
mode (LayerNorms, biases on attention and the LM head, the sparsemixer's inference routing) and the Llama
with PEFT's LoRA adapters on every linear layer (llama_lora: gradients of the adapters only), in
float64:
  config.json            our ModelConfig (Hugging Face field names)
  model.safetensors      the weights under our names (Mixtral's fused gate_up_proj split into
                         gate_proj / up_proj, router `mlp.gate` renamed `mlp.router`)
  reference.safetensors  input_ids, targets, logits, ce, aux, loss and grad.<name> for every
                         parameter, computed by transformers with autograd.
loss = cross_entropy(logits, targets) + router_aux_loss_coef * aux_loss, where aux_loss is
transformers' own load_balancing_loss_func (pooled over layers; see the Rust test).

    pip install torch transformers safetensors peft
    python scripts/hf_fixtures.py [KIND ...] # from the project root; default: every model
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import (GraniteMoeConfig, GraniteMoeForCausalLM, LlamaConfig, LlamaForCausalLM, MixtralConfig,
                          MixtralForCausalLM, OlmoeConfig,
                          OlmoeForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig,
                          Qwen3MoeForCausalLM)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "moe-engine", "tests", "fixtures", "hf")
B, T = 2, 8
COMMON = dict(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=32, rms_norm_eps=1e-5, tie_word_embeddings=False, attention_dropout=0.0)
ROPE = {"rope_type": "default", "rope_theta": 10000.0}


def our_config(hf, experts, top_k, expert_size, aux, **extra):
    return extra | {
        "vocab_size": hf.vocab_size, "hidden_size": hf.hidden_size, "num_hidden_layers": hf.num_hidden_layers,
        "num_attention_heads": hf.num_attention_heads, "num_key_value_heads": hf.num_key_value_heads,
        "intermediate_size": hf.intermediate_size, "max_position_embeddings": hf.max_position_embeddings,
        "rms_norm_eps": hf.rms_norm_eps, "rope_theta": ROPE["rope_theta"], "num_local_experts": experts,
        "num_experts_per_tok": top_k, "moe_intermediate_size": expert_size, "norm_topk_prob": True,
        "router_aux_loss_coef": aux, "router_z_loss_coef": 0.0, "aux_loss_scope": "global",
        "first_k_dense_replace": 0, "decoder_sparse_step": 1,
    }


def our_tensors(named, experts_f):
    """Hugging Face name -> tensor, to our names (a table, not code paths)."""
    out = {}
    for name, t in named.items():
        name = name.replace(".block_sparse_moe.", ".mlp.")  # GraniteMoE
        name = name.replace(".mlp.shared_experts.", ".mlp.shared_expert.")  # DeepSeek
        if name.endswith("mlp.gate.e_score_correction_bias"):
            out[name.replace("mlp.gate.e_score_correction_bias", "mlp.router.selection_bias")] = t
        elif name.endswith("mlp.gate.weight"):
            out[name.replace("mlp.gate.weight", "mlp.router.weight")] = t
        elif name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            out[base + "gate_proj"] = t[:, :experts_f, :]
            out[base + "up_proj"] = t[:, experts_f:, :]
        else:
            out[name] = t
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def gpt_oss_names(named):
    """gpt-oss's experts to ours: gate_up_proj [E, C, 2F] (gate and up columns alternating) and
    down_proj [E, F, C] stored [in, out] become gate/up_proj [E, F, C] and down_proj [E, C, F];
    their biases split the same way."""
    out = {}
    for name, t in named.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            out[base + "gate_proj"] = t[:, :, ::2].transpose(1, 2)
            out[base + "up_proj"] = t[:, :, 1::2].transpose(1, 2)
        elif name.endswith("mlp.experts.gate_up_proj_bias"):
            base = name[: -len("gate_up_proj_bias")]
            out[base + "gate_proj_bias"] = t[:, ::2]
            out[base + "up_proj_bias"] = t[:, 1::2]
        elif name.endswith("mlp.experts.down_proj"):
            out[name] = t.transpose(1, 2)
        else:
            out[name] = t
    return out


def peft_name(name):
    """PEFT's parameter name -> the wrapped model's (its adapters as <layer>.lora_A.weight)."""
    name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
    return name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def build(kind):
    torch.manual_seed({"mixtral": 0, "llama": 1, "qwen2_moe": 2, "llama_lora": 3, "olmoe": 4, "qwen3_moe": 5,
                       "granitemoe": 6, "deepseek_v3": 7, "gpt_oss": 8, "phimoe": 9}[kind])
    if kind == "qwen2_moe":
        hf = Qwen2MoeConfig(**COMMON, intermediate_size=16, moe_intermediate_size=16, shared_expert_intermediate_size=16,
                            num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, qkv_bias=True,
                            router_aux_loss_coef=0.02, output_router_logits=True, mlp_only_layers=[],
                            decoder_sparse_step=1, use_sliding_window=False, rope_parameters=ROPE,
                            experts_implementation="eager")
        model = Qwen2MoeForCausalLM(hf)
        cfg = our_config(hf, 4, 2, 16, 0.02, shared_expert_intermediate_size=16, shared_expert_gate=True,
                         qkv_bias=True)
        cfg["norm_topk_prob"] = False
    elif kind == "olmoe":
        hf = OlmoeConfig(**COMMON, intermediate_size=16, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False,
                         router_aux_loss_coef=0.02, output_router_logits=True, clip_qkv=None, rope_parameters=ROPE,
                         eos_token_id=None, pad_token_id=None, bos_token_id=None, experts_implementation="eager")
        model = OlmoeForCausalLM(hf)
        cfg = our_config(hf, 4, 2, 16, 0.02, qk_norm="whole")
        cfg["norm_topk_prob"] = False
    elif kind == "qwen3_moe":
        hf = Qwen3MoeConfig(**COMMON, intermediate_size=16, moe_intermediate_size=16, num_experts=4,
                            num_experts_per_tok=2, head_dim=8, norm_topk_prob=True, router_aux_loss_coef=0.02,
                            output_router_logits=True, mlp_only_layers=[], decoder_sparse_step=1,
                            use_sliding_window=False, rope_parameters=ROPE, experts_implementation="eager")
        model = Qwen3MoeForCausalLM(hf)
        cfg = our_config(hf, 4, 2, 16, 0.02, qk_norm="per_head", head_dim=8)
    elif kind == "granitemoe":
        hf = GraniteMoeConfig(**COMMON, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2,
                              router_aux_loss_coef=0.02, output_router_logits=True, rope_parameters=ROPE,
                              embedding_multiplier=2.0, attention_multiplier=0.3, residual_multiplier=0.5,
                              logits_scaling=4.0, experts_implementation="eager")
        model = GraniteMoeForCausalLM(hf)
        cfg = our_config(hf, 4, 2, 16, 0.02, router="topk_softmax", embedding_multiplier=2.0,
                         attention_multiplier=0.3, residual_multiplier=0.5, logits_scaling=4.0)
    elif kind == "deepseek_v3":
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
        common = {k: v for k, v in COMMON.items() if k != "num_key_value_heads"}
        hf = DeepseekV3Config(**common, num_key_value_heads=4, intermediate_size=24, moe_intermediate_size=16,
                              n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1,
                              routed_scaling_factor=1.5, norm_topk_prob=True, n_shared_experts=1,
                              first_k_dense_replace=1, q_lora_rank=6, kv_lora_rank=8, qk_nope_head_dim=4,
                              qk_rope_head_dim=4, v_head_dim=6, rope_interleave=True, rope_parameters=ROPE,
                              eos_token_id=None, pad_token_id=None, bos_token_id=None, experts_implementation="eager")
        model = DeepseekV3ForCausalLM(hf)
        cfg = our_config(hf, 4, 2, 16, 0.0, router="sigmoid_group", n_group=2, topk_group=1,
                         routed_scaling_factor=1.5, shared_expert_intermediate_size=16, first_k_dense_replace=1,
                         mla={"q_lora_rank": 6, "kv_lora_rank": 8, "qk_nope_head_dim": 4, "qk_rope_head_dim": 4,
                              "v_head_dim": 6, "rope_interleave": True})
        cfg["first_k_dense_replace"] = 1
    elif kind == "gpt_oss":
        from transformers import GptOssConfig, GptOssForCausalLM
        yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                "truncate": False, "original_max_position_embeddings": 8}
        common = {k: v for k, v in COMMON.items() if k != "tie_word_embeddings"}
        hf = GptOssConfig(**common, tie_word_embeddings=False, intermediate_size=16, num_local_experts=4,
                          num_experts_per_tok=2, head_dim=8, sliding_window=3, swiglu_limit=0.9,
                          layer_types=["sliding_attention", "full_attention"], router_aux_loss_coef=0.02,
                          output_router_logits=True, rope_parameters=yarn, eos_token_id=None, pad_token_id=None,
                          bos_token_id=None, experts_implementation="eager")
        model = GptOssForCausalLM(hf)
        cfg = our_config(hf, 4, 2, 16, 0.02, router="topk_softmax", router_bias=True, qkv_bias=True,
                         o_proj_bias=True, attention_sinks=True, expert_bias=True, swiglu_limit=0.9, head_dim=8,
                         sliding_window=3, layer_types=["sliding_attention", "full_attention"],
                         rope_scaling={k: v for k, v in yarn.items() if k != "rope_theta"})
    elif kind == "phimoe":
        from transformers import PhimoeConfig, PhimoeForCausalLM
        hf = PhimoeConfig(**COMMON, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2,
                          attention_bias=True, lm_head_bias=True, router_jitter_noise=0.4, input_jitter_noise=0.0,
                          router_aux_loss_coef=0.02, output_router_logits=True, rope_parameters=ROPE,
                          eos_token_id=None, pad_token_id=None, bos_token_id=None, experts_implementation="eager")
        model = PhimoeForCausalLM(hf)
        cfg = our_config(hf, 4, 2, 16, 0.02, router="sparse_mixer", sparse_mixer_eps=0.4, layer_norm=True,
                         lm_head_bias=True, qkv_bias=True, o_proj_bias=True)
    elif kind == "mixtral":
        hf = MixtralConfig(**COMMON, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2,
                           router_aux_loss_coef=0.02, output_router_logits=True, sliding_window=None,
                           rope_parameters=ROPE, experts_implementation="eager")
        model = MixtralForCausalLM(hf)
        cfg = our_config(hf, 4, 2, 16, 0.02)
    else:
        hf = LlamaConfig(**COMMON, intermediate_size=24, rope_parameters=ROPE, attention_bias=False, mlp_bias=False)
        model = LlamaForCausalLM(hf)
        cfg = our_config(hf, 0, 0, 0, 0.0)
    model.config._attn_implementation = "eager"
    model = model.double()
    if kind == "phimoe":
        model.eval()  # the sparsemixer's inference routing (training samples its experts)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.1 * torch.randn_like(buf))
    if kind == "llama_lora":
        # PEFT's LoRA on every linear layer (rank 4, alpha 8: scale 2), A and B random so every
        # adapter carries a gradient; only the adapters train.
        from peft import LoraConfig, get_peft_model
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(0.3 * torch.randn_like(p))
        cfg["lora"] = {"rank": 4, "alpha": 8.0, "targets": ["attn", "mlp"]}
    ids = torch.randint(0, hf.vocab_size, (B, T))
    targets = torch.randint(0, hf.vocab_size, (B, T))
    aux_loss = kind not in ("llama", "llama_lora", "deepseek_v3")
    out = model(input_ids=ids, output_router_logits=True) if aux_loss else model(input_ids=ids)
    logits = out.logits
    ce = F.cross_entropy(logits.reshape(-1, hf.vocab_size), targets.reshape(-1))
    aux = out.aux_loss if aux_loss else torch.zeros((), dtype=torch.float64)
    loss = ce + cfg["router_aux_loss_coef"] * aux
    loss.backward()
    named = {peft_name(k): v for k, v in model.named_parameters()}
    named.update({k: v for k, v in model.named_buffers() if k.endswith("e_score_correction_bias")})
    if kind == "gpt_oss":
        weights = our_tensors(gpt_oss_names({k: v for k, v in named.items()}), 16)
        grads = our_tensors(gpt_oss_names({k: v.grad for k, v in named.items() if v.grad is not None}), 16)
    else:
        weights = our_tensors({k: v for k, v in named.items()}, 16)
        grads = our_tensors({k: v.grad for k, v in named.items() if v.grad is not None}, 16)
    ref = {"input_ids": ids.to(torch.int64), "targets": targets.to(torch.int64),
           "logits": logits.detach().float().reshape(B * T, -1).contiguous(),
           "ce": ce.detach().float().reshape(1), "aux": aux.detach().float().reshape(1),
           "loss": loss.detach().float().reshape(1)}
    ref.update({"grad." + k: v for k, v in grads.items()})
    d = os.path.join(OUT, kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_file(weights, os.path.join(d, "model.safetensors"))
    save_file(ref, os.path.join(d, "reference.safetensors"))
    print(f"{kind}: loss {loss.item():.6f} (ce {ce.item():.6f}, aux {aux.item():.6f}), {len(weights)} tensors -> {d}")


# ---------------------------------------------------------------------------------------------
# MoE layers alone: DeepSeek-V3 (sigmoid routing with e_score_correction_bias, group-limited
# top-k, routed_scaling_factor, shared experts) and Qwen2-MoE (softmax, norm_topk_prob false,
# shared expert with sigmoid gate). Writes tests/fixtures/hf/layer_<kind>/ with config.json
# (ours), layer.safetensors (our tensor names: router.weight, router.selection_bias,
# experts.{gate,up,down}_proj, shared_expert.{gate,up,down}_proj, shared_expert_gate) and
# reference.safetensors (x, r, router_logits, topk_indices/topk_weights sorted by expert id per
# token, output, and grad.<name> of sum(output * r) for x and every weight).

def build_layer(kind):
    from transformers import DeepseekV3Config, Qwen2MoeConfig
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    torch.manual_seed(2 if kind == "deepseek_v3" else 3)
    c, n = 16, 12
    if kind == "deepseek_v3":
        hf = DeepseekV3Config(hidden_size=c, moe_intermediate_size=8, n_routed_experts=8, num_experts_per_tok=2,
                              n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
                              n_shared_experts=1, num_attention_heads=4, num_key_value_heads=4,
                              experts_implementation="eager")
        block = DeepseekV3MoE(hf)
        cfg = our_config_layer(c, 8, 2, 8, "sigmoid_group", True, n_group=4, topk_group=2, rsf=2.5,
                               shared=8, shared_gate=False)
        router = block.gate
    else:
        hf = Qwen2MoeConfig(hidden_size=c, moe_intermediate_size=8, num_experts=6, num_experts_per_tok=2,
                            norm_topk_prob=False, shared_expert_intermediate_size=12, num_attention_heads=4,
                            num_key_value_heads=4, experts_implementation="eager")
        block = Qwen2MoeSparseMoeBlock(hf)
        cfg = our_config_layer(c, 6, 2, 8, "softmax_topk", False, shared=12, shared_gate=True)
        router = block.gate
    block = block.double()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(0.3 * torch.randn_like(p))
        if kind == "deepseek_v3":
            router.e_score_correction_bias.copy_(0.1 * torch.randn_like(router.e_score_correction_bias))
    x = torch.randn(1, n, c, dtype=torch.float64, requires_grad=True)
    r = torch.randn(1, n, c, dtype=torch.float64)
    logits, weights, indices = router(x.detach().reshape(n, c))
    order = indices.argsort(dim=-1)
    out = block(x)
    (out * r).sum().backward()
    f = 8
    named = {k: v for k, v in block.named_parameters()}
    ours = {"router.weight": named["gate.weight"],
            "experts.gate_proj": named["experts.gate_up_proj"][:, :f, :],
            "experts.up_proj": named["experts.gate_up_proj"][:, f:, :],
            "experts.down_proj": named["experts.down_proj"]}
    grads = {k: None for k in ours}
    shared_prefix = "shared_experts" if kind == "deepseek_v3" else "shared_expert"
    for proj in ["gate_proj", "up_proj", "down_proj"]:
        ours[f"shared_expert.{proj}"] = named[f"{shared_prefix}.{proj}.weight"]
    if kind == "qwen2_moe":
        ours["shared_expert_gate"] = named["shared_expert_gate.weight"]
    weights_out = {k: v.detach().float().contiguous() for k, v in ours.items()}
    if kind == "deepseek_v3":
        weights_out["router.selection_bias"] = router.e_score_correction_bias.detach().float().contiguous()
    for k, v in ours.items():
        if k.startswith("experts.") and k != "experts.down_proj":
            g = named["experts.gate_up_proj"].grad
            grads[k] = g[:, :f, :] if k == "experts.gate_proj" else g[:, f:, :]
        else:
            grads[k] = v.grad if v.grad is not None else None
    grads["experts.down_proj"] = named["experts.down_proj"].grad
    ref = {"x": x.detach().float().reshape(n, c).contiguous(), "r": r.float().reshape(n, c).contiguous(),
           "router_logits": logits.detach().float().contiguous(),
           "topk_indices": indices.gather(1, order).to(torch.int64).contiguous(),
           "topk_weights": weights.detach().gather(1, order).float().contiguous(),
           "output": out.detach().float().reshape(n, c).contiguous(),
           "grad.x": x.grad.float().reshape(n, c).contiguous()}
    ref.update({"grad." + k: g.detach().float().contiguous() for k, g in grads.items()})
    d = os.path.join(OUT, "layer_" + kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
    save_file(weights_out, os.path.join(d, "layer.safetensors"))
    save_file(ref, os.path.join(d, "reference.safetensors"))
    print(f"layer {kind}: {len(weights_out)} tensors -> {d}")


def our_config_layer(c, experts, top_k, f, router, norm, n_group=1, topk_group=1, rsf=1.0, shared=0, shared_gate=False):
    return {
        "vocab_size": 64, "hidden_size": c, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 32, "max_position_embeddings": 32, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "num_local_experts": experts, "num_experts_per_tok": top_k,
        "moe_intermediate_size": f, "norm_topk_prob": norm, "router_aux_loss_coef": 0.0,
        "router_z_loss_coef": 0.0, "router": router, "n_group": n_group, "topk_group": topk_group,
        "routed_scaling_factor": rsf, "shared_expert_intermediate_size": shared,
        "shared_expert_gate": shared_gate,
    }


if __name__ == "__main__":
    import sys
    # python scripts/hf_fixtures.py [KIND ...]: only those (default: every model and layer)
    models = ["mixtral", "llama", "qwen2_moe", "llama_lora", "olmoe", "qwen3_moe", "granitemoe", "deepseek_v3",
              "gpt_oss", "phimoe"]
    for kind in sys.argv[1:] or models + ["layer_deepseek_v3", "layer_qwen2_moe"]:
        if kind.startswith("layer_"):
            build_layer(kind.removeprefix("layer_"))
        else:
            build(kind)
