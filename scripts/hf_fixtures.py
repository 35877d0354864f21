#!/usr/bin/env python3
"""Writes the Hugging Face parity fixtures of tests/fixtures/hf/ (run by hand, not by CI).

For a tiny random MixtralForCausalLM (MoE) and LlamaForCausalLM (dense), in float64:
  config.json            our ModelConfig (Hugging Face field names)
  model.safetensors      the weights under our names (Mixtral's fused gate_up_proj split into
                         gate_proj / up_proj, router `mlp.gate` renamed `mlp.router`)
  reference.safetensors  input_ids, targets, logits, ce, aux, loss and grad.<name> for every
                         parameter, computed by transformers with autograd.
loss = cross_entropy(logits, targets) + router_aux_loss_coef * aux_loss, where aux_loss is
transformers' own load_balancing_loss_func (pooled over layers; see the Rust test).

    pip install torch transformers safetensors
    python scripts/hf_fixtures.py            # from the project root
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "moe-engine", "tests", "fixtures", "hf")
B, T = 2, 8
COMMON = dict(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=32, rms_norm_eps=1e-5, tie_word_embeddings=False, attention_dropout=0.0)
ROPE = {"rope_type": "default", "rope_theta": 10000.0}


def our_config(hf, experts, top_k, expert_size, aux):
    return {
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
        if name.endswith("mlp.gate.weight"):
            out[name.replace("mlp.gate.weight", "mlp.router.weight")] = t
        elif name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            out[base + "gate_proj"] = t[:, :experts_f, :]
            out[base + "up_proj"] = t[:, experts_f:, :]
        else:
            out[name] = t
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def build(kind):
    torch.manual_seed(0 if kind == "mixtral" else 1)
    if kind == "mixtral":
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
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    ids = torch.randint(0, hf.vocab_size, (B, T))
    targets = torch.randint(0, hf.vocab_size, (B, T))
    out = model(input_ids=ids, output_router_logits=(kind == "mixtral"))
    logits = out.logits
    ce = F.cross_entropy(logits.reshape(-1, hf.vocab_size), targets.reshape(-1))
    aux = out.aux_loss if kind == "mixtral" else torch.zeros((), dtype=torch.float64)
    loss = ce + cfg["router_aux_loss_coef"] * aux
    loss.backward()
    named = dict(model.named_parameters())
    weights = our_tensors({k: v for k, v in named.items()}, 16)
    grads = our_tensors({k: v.grad for k, v in named.items()}, 16)
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


if __name__ == "__main__":
    build("mixtral")
    build("llama")
