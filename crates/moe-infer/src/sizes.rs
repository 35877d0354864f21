//! What a loaded checkpoint holds, counted from its tensors: parameters (total, active per
//! token, in experts), bytes of weights, KV-cache bytes per token. `moe inspect` prints it
//! with the engine's size formulas (`moe_engine::inspect`) for the form it trains in.

use crate::model::Model;

#[derive(Clone, Debug)]
pub struct Summary {
    pub total_params: u64,
    /// Parameters a token touches, counted as the engine counts them (`moe_engine::inspect`):
    /// top-k of each layer's experts, one row of an untied embedding table.
    pub active_params: u64,
    pub expert_params: u64,
    pub weight_bytes: u64,
    pub kv_bytes_per_token: u64,
}

/// Counts parameters from the tensors themselves (MXFP4 blocks hold two values per byte).
pub fn summary(m: &Model) -> Summary {
    let s = &m.spec;
    let (mut total, mut experts, mut bytes, mut embed) = (0u64, 0u64, 0u64, 0u64);
    for (name, e) in &m.store.entries {
        bytes += (e.end - e.start) as u64;
        let n: u64 = e.shape.iter().map(|&d| d as u64).product();
        let n = if name.ends_with("_scales") && e.dtype == "U8" {
            0
        } else if name.ends_with("_blocks") && e.dtype == "U8" {
            2 * n
        } else {
            n
        };
        total += n;
        if name == "model.embed_tokens.weight" {
            embed = n;
        }
        if name.contains(".experts.") || name.contains("input_linear") || name.contains("output_linear") {
            experts += n;
        }
    }
    let (e, k) = (s.moe.experts as u64, s.moe.top_k as u64);
    // a tied table is read whole as the LM head
    let unread_embed = if s.tie { 0 } else { embed.saturating_sub(s.hidden as u64) };
    let active = total - experts / e * (e - k) - unread_embed;
    let kv = crate::model::Cache::bytes_per_token(s) as u64;
    Summary {
        total_params: total,
        active_params: active,
        expert_params: experts,
        weight_bytes: bytes,
        kv_bytes_per_token: kv,
    }
}
