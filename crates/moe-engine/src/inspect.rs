//! `moe inspect`: size accounting of a model config (parameters, total and active per token;
//! FLOPs per token; memory for training and inference; one place for these formulas), its
//! report, and the number formats every inspect report uses (a Hugging Face or GGUF
//! checkpoint adds what its files hold, `moe_infer::sizes`).

use crate::config::ModelConfig;
use crate::params::Layout;

/// Sizes derived from a config.
#[derive(Clone, Debug)]
pub struct Sizes {
    pub total_params: usize,
    /// Parameters a token touches: embeddings row excluded, K of E experts, router included.
    pub active_params: usize,
    /// Of which in matrix products (everything but embeddings and norms).
    pub active_matmul_params: usize,
    pub expert_params: usize,
    /// Forward FLOPs per token at context `t`: 2 * active matmul params + attention scores
    /// and values (2 * 2 * C * t/2 per layer, causal average).
    pub forward_flops_per_token: f64,
    /// Training FLOPs per token: 3x forward (forward + backward).
    pub train_flops_per_token: f64,
    /// Bytes of weights (f32), weights + grads + AdamW moments (16 B/param).
    pub weight_bytes: usize,
    pub train_state_bytes: usize,
    /// Activation bytes of one micro-batch (B x T) as allocated by `model::Acts`.
    pub activation_bytes: usize,
    /// KV-cache bytes for one sequence of `t` tokens.
    pub kv_cache_bytes: usize,
}

pub fn sizes(cfg: &ModelConfig, b: usize, t: usize) -> Sizes {
    let layout = Layout::new(cfg);
    let total = layout.total;
    let (c, v, l) = (cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers);
    let sh = cfg.attn_shape();
    let (hd, gd, hdv, gdv) = (sh.h * sh.d, sh.g * sh.d, sh.h * sh.dv, sh.g * sh.dv);
    // the attention's matrices (q, k, v, o, or latent attention's five), as laid out
    let attn = |sp: &crate::params::LayerSpans| {
        let q_a = sp.mla.and_then(|m| m.q_a).map_or(0, |[w, _]| w.len);
        sp.wq.len + sp.wk.len + sp.wv.len + sp.wo.len + q_a
    };
    let (e, k, fe, fd) =
        (cfg.num_local_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size, cfg.intermediate_size);
    let mut active_mm = c * v; // lm_head
    let mut experts = 0;
    for (li, sp) in layout.layers.iter().enumerate() {
        active_mm += attn(sp);
        if cfg.is_moe_layer(li) {
            let fs = cfg.shared_expert_intermediate_size;
            let shared = if fs > 0 { 3 * c * fs + usize::from(cfg.shared_expert_gate) * c } else { 0 };
            active_mm += e * c + k * 3 * c * fe + shared;
            experts += e * 3 * c * fe;
        } else {
            active_mm += 3 * c * fd;
        }
    }
    // norms (query/key norms too) and query/key/value biases: read whole by every token
    let small: usize = layout
        .layers
        .iter()
        .map(|sp| {
            let mla_norms = sp.mla.iter().flat_map(|m| m.q_a.map(|[_, n]| n).into_iter().chain([m.kv_a_norm]));
            let biases = [sp.ln1_bias, sp.ln2_bias, sp.o_bias, sp.sinks].into_iter().flatten();
            let spans =
                sp.qkv_bias.iter().flatten().chain(sp.qk_norm.iter().flatten()).copied().chain(mla_norms).chain(biases);
            sp.ln1.len + sp.ln2.len + spans.map(|s| s.len).sum::<usize>()
        })
        .sum();
    let heads = [layout.norm_bias, layout.lm_head_bias].into_iter().flatten().map(|s| s.len).sum::<usize>();
    let active = active_mm + small + layout.norm.len + heads + c; // one embedding row
                                                                  // scores (D wide) and values (Dv wide) over t/2 keys on average
    let fwd = 2.0 * active_mm as f64 + (l as f64) * 2.0 * (hd + hdv) as f64 * t as f64 / 2.0;
    // Activations per token, mirroring model::Acts (f32).
    let n = b * t;
    let mut per_tok = c * (l + 1) + 2 * c + v + 1 + 1; // resid, lnf, logits, losses, rstdf
    per_tok += 4 * c + 2 * hd + 2 * hdv + 2 * gd + 2 * gdv; // backward scratch
    for li in 0..l {
        per_tok += 3 * c + 2 + hd + hdv + gd + gdv;
        per_tok +=
            if cfg.is_moe_layer(li) { 2 * e + 1 + 2 * k + k * (4 * c + 6 * fe + 1) + 2 * e + 2 * k } else { 3 * fd };
    }
    let att = l * b * cfg.num_attention_heads * t * t;
    let kv = l * t * (gd + gdv);
    Sizes {
        total_params: total,
        active_params: active,
        active_matmul_params: active_mm,
        expert_params: experts,
        forward_flops_per_token: fwd,
        train_flops_per_token: 3.0 * fwd,
        weight_bytes: total * 4,
        train_state_bytes: total * 16,
        activation_bytes: (n * per_tok + att + b * kv) * 4,
        kv_cache_bytes: kv * 4,
    }
}

/// Bytes in GiB, MiB or KiB.
pub fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

/// A count in billions, millions or thousands.
pub fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn human(b: usize) -> String {
    bytes(b as u64)
}

/// Human-readable report of a config, with training sizes for a micro-batch of B x T.
pub fn report(cfg: &ModelConfig, b: usize, t: usize) -> String {
    let s = sizes(cfg, b, t);
    let kind = if cfg.num_local_experts == 0 {
        "dense".to_string()
    } else {
        let shared = match cfg.shared_expert_intermediate_size {
            0 => String::new(),
            fs => format!(" plus a shared expert of width {fs}"),
        };
        format!(
            "MoE: {} experts, top-{}, expert width {}{shared}, {} of {} layers MoE",
            cfg.num_local_experts,
            cfg.num_experts_per_tok,
            cfg.moe_intermediate_size,
            cfg.num_moe_layers(),
            cfg.num_hidden_layers
        )
    };
    let mut r = String::new();
    r += &format!("architecture      decoder-only, {kind}\n");
    if let Some(a) = cfg.mla {
        r += &format!(
            "attention         latent (MLA): kv rank {}, q rank {}, query/key head {} + {} rotated, value head {}\n",
            a.kv_lora_rank, a.q_lora_rank, a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim
        );
    }
    r += &format!(
        "shape             vocab {}, width {}, {} layers, {} heads ({} kv), head dim {}, context {}\n",
        cfg.vocab_size,
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim(),
        cfg.max_position_embeddings
    );
    if (0..cfg.num_hidden_layers).any(|l| !cfg.is_moe_layer(l)) {
        r += &format!("dense MLP width   {}\n", cfg.intermediate_size);
    }
    r += &format!(
        "parameters        {} total, {} active per token ({} in experts)\n",
        count(s.total_params as u64),
        count(s.active_params as u64),
        count(s.expert_params as u64)
    );
    let lora = cfg.lora.as_ref().map(|l| {
        let layout = crate::params::Layout::new(cfg);
        let targets: Vec<String> = l.targets.iter().map(|t| format!("{t:?}").to_lowercase()).collect();
        let adapters = layout.total - layout.base_total;
        let matrices: usize = layout.linear_weights().iter().map(|s| s.len).sum();
        let per = match l.base {
            crate::packed::BaseFormat::F32 => 4.0,
            crate::packed::BaseFormat::Bf16 => 2.0,
            crate::packed::BaseFormat::Q8_0 => 34.0 / 32.0,
        };
        let base_bytes = (matrices as f64 * per) as usize + (layout.base_total - matrices) * 4;
        r += &format!(
            "LoRA              rank {}, alpha {} on {}: {} trainable, the base frozen ({:?})\n",
            l.rank,
            l.alpha,
            targets.join(", "),
            count(adapters as u64),
            l.base
        );
        (base_bytes, adapters * 16)
    });
    r += &format!(
        "FLOPs per token   {:.1} M forward, {:.1} M training (context {t})\n",
        s.forward_flops_per_token / 1e6,
        s.train_flops_per_token / 1e6
    );
    r += &format!(
        "memory, inference {} weights (f32) + {} KV cache per sequence of {t}\n",
        human(s.weight_bytes),
        human(s.kv_cache_bytes)
    );
    let state = match lora {
        Some((base, adapters)) => format!("{} frozen base + {} adapters+grads+AdamW", human(base), human(adapters)),
        None => format!("{} weights+grads+AdamW", human(s.train_state_bytes)),
    };
    r += &format!("memory, training  {state}, {} activations for batch {b} x {t}\n", human(s.activation_bytes));
    r
}
