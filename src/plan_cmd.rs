//! `moe plan`: memory of training and inference for a model (a preset, a config of ours, a
//! Hugging Face directory or config.json, or a published model built in) on given hardware,
//! and the fewest devices that hold it with their placement. Formulas: `moe_engine::plan`.

use anyhow::{bail, Context, Result};
use clap::Args;
use moe_engine::config::{ModelConfig, PRESETS};
use moe_engine::plan::{device_memory, fewest_devices, Hardware, LayerPlan, Placement, PlanModel};
use moe_infer::config::{Ffn, Spec};
use std::path::{Path, PathBuf};

/// Published models whose config.json ships with moe (configs/).
const PUBLISHED: [(&str, &str); 3] = [
    ("mixtral-8x7b", include_str!("../configs/mixtral-8x7b.json")),
    ("deepseek-v3", include_str!("../configs/deepseek-v3.json")),
    ("grok-1", include_str!("../configs/grok-1.json")),
];

#[derive(Args)]
pub struct PlanArgs {
    /// mixtral-8x7b, deepseek-v3, grok-1, a preset, a config JSON of ours, or a Hugging Face
    /// directory / config.json.
    model: String,
    /// Memory per device (GB = 1e9 bytes).
    #[arg(long, default_value_t = 80.0)]
    memory_gb: f64,
    /// Memory bandwidth per device (GB/s), for the decode bound.
    #[arg(long, default_value_t = 2000.0)]
    bandwidth_gbs: f64,
    /// Evaluate this many devices too (stages x expert-parallel chosen to fit best).
    #[arg(long)]
    devices: Option<usize>,
    /// Training tokens per device per micro-batch.
    #[arg(long, default_value_t = 4096)]
    train_tokens: u64,
    /// Inference: sequences and context length (KV cache).
    #[arg(long, default_value_t = 1)]
    batch: u64,
    #[arg(long, default_value_t = 4096)]
    context: u64,
    /// Bytes per weight at inference: 2 (bf16), 1 (8-bit), 0.5 (4-bit).
    #[arg(long, default_value_t = 2.0)]
    weight_bytes: f64,
    /// Shard the fp32 optimizer state of replicated weights over each stage's devices (ZeRO-1).
    #[arg(long)]
    zero: bool,
}

/// Parameter counts of a Hugging Face config (MLA with its compressed KV cache).
fn from_spec(name: &str, s: &Spec) -> PlanModel {
    let c = s.hidden as u64;
    let (h, g, d, vd) = (s.heads as u64, s.kv_heads as u64, s.head_dim as u64, s.v_dim as u64);
    let (attn, kv) = match &s.mla {
        Some(m) => {
            let qd = (m.nope + m.rope) as u64;
            let q = match m.q_lora {
                Some(r) => c * r as u64 + r as u64 + r as u64 * h * qd,
                None => c * h * qd,
            };
            let (kl, rope) = (m.kv_lora as u64, m.rope as u64);
            let kv = c * (kl + rope) + kl + kl * h * (m.nope + m.v) as u64;
            (q + kv + h * m.v as u64 * c, kl + rope)
        }
        None => (c * h * d + c * g * d + c * g * vd + h * vd * c, g * (d + vd)),
    };
    let m = &s.moe;
    let layers = s
        .ffn
        .iter()
        .map(|f| {
            let base = LayerPlan {
                attn: attn + 2 * c,
                dense: 0,
                expert: 0,
                experts: 0,
                top_k: 0,
                active_width: 0,
                kv_per_token: kv,
            };
            match *f {
                Ffn::Dense(inter) => LayerPlan { dense: 3 * c * inter as u64, active_width: inter as u64, ..base },
                Ffn::Moe => {
                    let (sw, sg) = m.shared.map_or((0, false), |(w, g)| (w as u64, g));
                    let e = m.experts as u64;
                    let router = e * c + if m.router_bias { e } else { 0 };
                    LayerPlan {
                        dense: router + 3 * c * sw + u64::from(sg) * c,
                        expert: 3 * c * m.inter as u64,
                        experts: m.experts,
                        top_k: m.top_k,
                        active_width: m.top_k as u64 * m.inter as u64 + sw,
                        ..base
                    }
                }
            }
        })
        .collect();
    let embed = s.vocab as u64 * c * if s.tie { 1 } else { 2 } + c;
    PlanModel { name: name.into(), hidden: c, embed, layers }
}

fn load(model: &str) -> Result<PlanModel> {
    if let Some((name, text)) = PUBLISHED.iter().find(|(n, _)| *n == model) {
        let v: serde_json::Value = serde_json::from_str(text)?;
        return Ok(from_spec(name, &Spec::parse(&v, Path::new(name))?));
    }
    if PRESETS.contains(&model) {
        return Ok(PlanModel::from_config(model, &ModelConfig::preset(model)?));
    }
    let p = PathBuf::from(model);
    let file = if p.is_dir() { p.join("config.json") } else { p.clone() };
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "`{model}` is not a published model ({}), a preset, or a readable config",
            PUBLISHED.map(|p| p.0).join(", ")
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
    if v.get("architectures").is_some() || v.get("model_type").is_some() {
        return Ok(from_spec(model, &Spec::parse(&v, &file)?));
    }
    let cfg: ModelConfig =
        serde_json::from_value(v).with_context(|| format!("{}: not a model config", file.display()))?;
    cfg.validate()?;
    Ok(PlanModel::from_config(model, &cfg))
}

fn gb(b: f64) -> String {
    format!("{:.1} GB", b / 1e9)
}

fn row(what: &str, p: &Placement) -> String {
    let d = &p.device;
    format!(
        "| {what} | {} = {} stages x {} expert-parallel | {} | {} | {} | {} | {} | {} | {} |",
        p.devices(),
        p.stages,
        p.expert_parallel,
        p.layers_per_stage,
        p.experts_per_device,
        gb(d.weights),
        gb(d.grads + d.optimizer),
        gb(d.activations),
        gb(d.kv_cache),
        gb(d.total())
    )
}

pub fn plan_cmd(a: PlanArgs) -> Result<()> {
    let m = load(&a.model)?;
    if a.memory_gb <= 0.0 || a.bandwidth_gbs <= 0.0 || a.weight_bytes <= 0.0 {
        bail!("--memory-gb, --bandwidth-gbs and --weight-bytes must be positive");
    }
    let hw = Hardware {
        memory: a.memory_gb * 1e9,
        bandwidth: a.bandwidth_gbs * 1e9,
        train_tokens: a.train_tokens,
        batch: a.batch,
        context: a.context,
        weight_bytes: a.weight_bytes,
        zero: a.zero,
    };
    let (total, active, routed) = (m.total() as f64, m.active() as f64, m.routed() as f64);
    println!("# {}\n", m.name);
    println!(
        "parameters: {:.2} B total, {:.2} B active per token, {:.2} B in routed experts ({:.0}%)",
        total / 1e9,
        active / 1e9,
        routed / 1e9,
        100.0 * routed / total
    );
    let one = |training| device_memory(&m, &hw, 1, 1, training).device;
    let (t1, i1) = (one(true), one(false));
    println!(
        "training, whole model: weights {} (bf16) + gradients {} + optimizer {} (fp32 master, AdamW m, v) + activations {} ({} tokens)",
        gb(t1.weights),
        gb(t1.grads),
        gb(t1.optimizer),
        gb(t1.activations),
        a.train_tokens
    );
    println!(
        "inference, whole model: weights {} ({} bytes/weight) + KV cache {} ({} x {} tokens) + activations {}",
        gb(i1.weights),
        a.weight_bytes,
        gb(i1.kv_cache),
        a.batch,
        a.context,
        gb(i1.activations)
    );
    println!(
        "decode bound: {:.1} tokens/s per sequence at {} GB/s (active weights {} read once per token)\n",
        hw.bandwidth / (active * a.weight_bytes),
        a.bandwidth_gbs,
        gb(active * a.weight_bytes)
    );
    println!("| job | devices ({} GB each) | layers/stage | experts/device/layer | weights | grads + optimizer | activations | KV cache | fullest device |", a.memory_gb);
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (what, training) in [("training", true), ("inference", false)] {
        match fewest_devices(&m, &hw, training) {
            Some(p) => println!("{}", row(&format!("{what}, fewest devices"), &p)),
            None => println!("| {what} | does not fit: even one layer per stage with every expert split overflows a device | | | | | | | |"),
        }
        if let Some(n) = a.devices {
            let e = m.layers.iter().map(|l| l.experts).max().unwrap_or(1).max(1);
            // Every split of n devices into stages x expert-parallel (dividing the experts).
            let best = (1..=n.min(m.layers.len()))
                .filter(|&st| n.is_multiple_of(st) && e.is_multiple_of(n / st))
                .map(|st| device_memory(&m, &hw, st, n / st, training))
                .min_by(|x, y| x.device.total().total_cmp(&y.device.total()));
            match best {
                Some(p) => println!("{}", row(&format!("{what}, {n} devices"), &p)),
                None => println!(
                    "| {what}, {n} devices | no split of {n} into stages x a divisor of {e} experts | | | | | | | |"
                ),
            }
        }
    }
    Ok(())
}
