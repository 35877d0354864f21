//! `moe inspect DIR` for a Hugging Face checkpoint: architecture, sizes, experts, total and
//! active parameters per token, bytes by dtype, and the memory needed to run it.

use crate::config::Ffn;
use crate::model::Model;
use std::fmt::Write;

#[derive(Clone, Debug)]
pub struct Summary {
    pub total_params: u64,
    pub active_params: u64,
    pub expert_params: u64,
    pub weight_bytes: u64,
    pub kv_bytes_per_token: u64,
}

/// Counts parameters from the tensors themselves (MXFP4 blocks hold two values per byte).
pub fn summary(m: &Model) -> Summary {
    let s = &m.spec;
    let (mut total, mut experts, mut bytes) = (0u64, 0u64, 0u64);
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
        if name.contains(".experts.") || name.contains("input_linear") || name.contains("output_linear") {
            experts += n;
        }
    }
    let (e, k) = (s.moe.experts as u64, s.moe.top_k as u64);
    let active = total - experts / e * (e - k);
    let kv = crate::model::Cache::bytes_per_token(s) as u64;
    Summary {
        total_params: total,
        active_params: active,
        expert_params: experts,
        weight_bytes: bytes,
        kv_bytes_per_token: kv,
    }
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// Bytes in GiB, MiB or KiB.
pub fn gib(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

pub fn report(m: &Model) -> String {
    let s = &m.spec;
    let x = summary(m);
    let moe_layers = s.ffn.iter().filter(|f| **f == Ffn::Moe).count();
    let mut o = String::new();
    let _ = writeln!(o, "{}  ({})", s.arch.name(), m.store.dir.display());
    let _ = writeln!(o, "  layers           {} ({} MoE, {} dense)", s.layers, moe_layers, s.layers - moe_layers);
    let _ = writeln!(o, "  hidden           {}   vocab {}   context {}", s.hidden, s.vocab, s.max_pos);
    let attn = match s.mla {
        Some(m) => format!("MLA: {} heads, kv rank {}, q rank {:?}, rope dim {}", s.heads, m.kv_lora, m.q_lora, m.rope),
        None => format!("{} heads, {} kv heads, head dim {}", s.heads, s.kv_heads, s.head_dim),
    };
    let _ = writeln!(o, "  attention        {attn}");
    let windows = s.windows.iter().filter(|w| w.is_some()).count();
    if windows > 0 {
        let _ = writeln!(o, "  sliding window   {} of {} layers", windows, s.layers);
    }
    let shared = s.moe.shared.map(|(w, g)| format!(", shared expert {w}{}", if g { " (gated)" } else { "" }));
    let _ = writeln!(
        o,
        "  experts          {} per MoE layer, top-{}, expert width {}{}",
        s.moe.experts,
        s.moe.top_k,
        s.moe.inter,
        shared.unwrap_or_default()
    );
    let _ = writeln!(o, "  router           {:?}", s.moe.router);
    let _ = writeln!(
        o,
        "  parameters       {} total, {} active per token ({:.1}%), {} in experts",
        human(x.total_params),
        human(x.active_params),
        100.0 * x.active_params as f64 / x.total_params as f64,
        human(x.expert_params)
    );
    let dt: Vec<String> = m.store.bytes_by_dtype().iter().map(|(d, b)| format!("{d} {}", gib(*b as u64))).collect();
    let _ =
        writeln!(o, "  weights          {} in {} file(s): {}", gib(x.weight_bytes), m.store.files.len(), dt.join(", "));
    let ctx = s.max_pos.min(4096) as u64;
    let _ = writeln!(
        o,
        "  KV cache (f32)   {} per token, {} at {} tokens",
        gib(x.kv_bytes_per_token),
        gib(x.kv_bytes_per_token * ctx),
        ctx
    );
    let _ = writeln!(
        o,
        "  memory to run    {} (weights, memory-mapped) + {} (KV cache at {} tokens)",
        gib(x.weight_bytes),
        gib(x.kv_bytes_per_token * ctx),
        ctx
    );
    o
}
