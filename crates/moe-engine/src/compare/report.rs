//! The result of a comparison: per variant, parameters (total and active), FLOPs per token,
//! memory, tokens/s, final validation loss and the tokens and wall-clock it took to reach the
//! reference's final validation loss; as a Markdown table (compare.md), JSON (compare.json) and
//! plots of validation loss against tokens and against wall-clock.

use super::{ValPoint, VariantRun};
use crate::error::{Error, Result};
use crate::inspect::sizes;
use crate::plot::{render, Chart, Series};
use crate::train::TrainConfig;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One line of the comparison table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub label: String,
    /// "dense, F 1024" or "8 experts, top-2, F 512 (+ shared 512)".
    pub shape: String,
    pub total_params: usize,
    pub active_params: usize,
    pub train_flops_per_token: f64,
    /// Weights, gradients, AdamW moments and activations of one micro-batch (computed).
    pub train_memory_bytes: usize,
    /// Training tokens per second (median step).
    pub tokens_per_s: f64,
    pub tokens: u64,
    pub seconds: f64,
    pub final_loss: f64,
    /// Tokens and seconds of training at which the reference's final loss was first reached.
    pub reach: Option<(f64, f64)>,
    /// Reference tokens (seconds) divided by this variant's tokens (seconds) to that loss.
    pub speedup_tokens: Option<f64>,
    pub speedup_time: Option<f64>,
    /// The wall-clock speed-up with every step's time taken relative to the reference's step of
    /// the same lockstep round (see [`load_adjusted`]): unbiased when the machine's load changes.
    pub speedup_time_adjusted: Option<f64>,
}

/// Tokens and seconds at which the validation curve first gets down to `target`, linearly
/// interpolated between validations; None if it never does.
pub fn reach(val: &[ValPoint], target: f64) -> Option<(f64, f64)> {
    let first = val.first()?;
    if first.loss <= target {
        return Some((first.tokens as f64, first.seconds));
    }
    val.windows(2).find(|w| w[1].loss <= target).map(|w| {
        let (a, b) = (w[0], w[1]);
        let f = (a.loss - target) / (a.loss - b.loss);
        (a.tokens as f64 + f * (b.tokens as f64 - a.tokens as f64), a.seconds + f * (b.seconds - a.seconds))
    })
}

fn shape(r: &VariantRun) -> String {
    let c = &r.model;
    if c.num_local_experts == 0 {
        return format!("dense, F {}", c.intermediate_size);
    }
    let shared = if c.shared_expert_intermediate_size > 0 {
        format!(" + shared {}", c.shared_expert_intermediate_size)
    } else {
        String::new()
    };
    format!("{} experts, top-{}, F {}{shared}", c.num_local_experts, c.num_experts_per_tok, c.moe_intermediate_size)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Each run's validation points with load-adjusted seconds: a step counts its time over the
/// reference's step of the same lockstep round (the rounds run one step of every model in turn,
/// so both saw the same load), times the reference's median step time. A load that rises or
/// falls during a comparison then weighs on every model alike, whereas plain time-to-loss sets
/// a model's early steps against the reference's whole run. Past the reference's last step, its
/// median step stands in.
pub fn load_adjusted(runs: &[VariantRun]) -> Vec<Vec<ValPoint>> {
    let Some(rf) = runs.first() else { return vec![] };
    let base = median(&rf.step_seconds);
    runs.iter()
        .map(|r| {
            let mut cum = vec![0.0; r.step_seconds.len() + 1];
            for (j, &s) in r.step_seconds.iter().enumerate() {
                let round = rf.step_seconds.get(j).copied().unwrap_or(base);
                cum[j + 1] = cum[j] + s / round.max(1e-12) * base;
            }
            let at = |step: u64| cum.get(step as usize).copied().unwrap_or(f64::NAN);
            r.val.iter().map(|v| ValPoint { seconds: at(v.step), ..*v }).collect()
        })
        .collect()
}

/// The table rows; the first run is the reference.
pub fn rows(runs: &[VariantRun], tc: &TrainConfig) -> Vec<Row> {
    let last = |r: &VariantRun| r.val.last().copied();
    let reference = runs.first().and_then(last);
    let adjusted = load_adjusted(runs);
    let ref_adjusted = adjusted.first().and_then(|v| v.last().copied());
    let per_step = (tc.batch_size * tc.seq_len * tc.grad_accum) as f64;
    runs.iter()
        .enumerate()
        .map(|(i, r)| {
            let s = sizes(&r.model, tc.batch_size, tc.seq_len);
            let end = last(r);
            let hit = match (i, reference) {
                (0, Some(rf)) => Some((rf.tokens as f64, rf.seconds)),
                (_, Some(rf)) => reach(&r.val, rf.loss),
                _ => None,
            };
            let speed = |f: fn(&ValPoint) -> f64, g: fn((f64, f64)) -> f64| {
                reference.zip(hit).map(|(rf, h)| f(&rf) / g(h).max(1e-12))
            };
            let hit_adjusted = match (i, ref_adjusted) {
                (0, Some(rf)) => Some((rf.tokens as f64, rf.seconds)),
                (_, Some(_)) => reference.and_then(|rf| reach(&adjusted[i], rf.loss)),
                _ => None,
            };
            let adjusted_speed = ref_adjusted.zip(hit_adjusted).map(|(rf, h)| rf.seconds / h.1.max(1e-12));
            Row {
                label: r.label.clone(),
                shape: shape(r),
                total_params: s.total_params,
                active_params: s.active_params,
                train_flops_per_token: s.train_flops_per_token,
                train_memory_bytes: s.train_state_bytes + s.activation_bytes,
                tokens_per_s: per_step / median(&r.step_seconds),
                tokens: end.map_or(0, |v| v.tokens),
                seconds: end.map_or(0.0, |v| v.seconds),
                final_loss: end.map_or(f64::NAN, |v| v.loss),
                reach: hit,
                speedup_tokens: speed(|v| v.tokens as f64, |h| h.0),
                speedup_time: speed(|v| v.seconds, |h| h.1),
                speedup_time_adjusted: adjusted_speed,
            }
        })
        .collect()
}

fn mib(b: usize) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

/// The Markdown table and one sentence per variant.
pub fn markdown(rows: &[Row]) -> String {
    let Some(rf) = rows.first() else { return String::new() };
    let mut t = format!(
        "Reference: **{}**, final validation loss {:.4} after {:.2} M tokens and {:.0} s of training steps.\n\n",
        rf.label,
        rf.final_loss,
        rf.tokens as f64 / 1e6,
        rf.seconds
    );
    t += "| run | shape | total params | active params | train GFLOP/token | train memory | tokens/s | final val loss | tokens to ref. loss | time to ref. loss | speed-up (tokens) | speed-up (wall-clock) | speed-up (wall-clock, load-adjusted) |\n";
    t += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in rows {
        let (reach_t, reach_s) = r.reach.map_or(("not reached".into(), "not reached".into()), |(k, s)| {
            (format!("{:.2} M", k / 1e6), format!("{s:.0} s"))
        });
        let x = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}x"));
        t += &format!(
            "| {} | {} | {:.2} M | {:.2} M | {:.4} | {} | {:.0} | {:.4} | {} | {} | {} | {} | {} |\n",
            r.label,
            r.shape,
            r.total_params as f64 / 1e6,
            r.active_params as f64 / 1e6,
            r.train_flops_per_token / 1e9,
            mib(r.train_memory_bytes),
            r.tokens_per_s,
            r.final_loss,
            reach_t,
            reach_s,
            x(r.speedup_tokens),
            x(r.speedup_time),
            x(r.speedup_time_adjusted)
        );
    }
    t += "\n";
    for r in &rows[1..] {
        t += &match r.reach {
            Some((k, s)) => format!(
                "- {} reaches {:.4} after {:.0}% of the reference's tokens and {:.0}% of its wall-clock.\n",
                r.label,
                rf.final_loss,
                100.0 * k / rf.tokens.max(1) as f64,
                100.0 * s / rf.seconds.max(1e-12)
            ),
            None => format!(
                "- {} does not reach {:.4} within its budget (final {:.4}).\n",
                r.label, rf.final_loss, r.final_loss
            ),
        };
    }
    t
}

/// Writes compare.md, compare.json, val_vs_tokens.png and val_vs_seconds.png into `out`.
pub fn write(out: &Path, runs: &[VariantRun], tc: &TrainConfig, header: &str) -> Result<(String, Vec<PathBuf>)> {
    let rows = rows(runs, tc);
    let md = format!("{header}{}", markdown(&rows));
    crate::checkpoint::write_atomic(&out.join("compare.md"), md.as_bytes())?;
    let json = serde_json::to_vec_pretty(&serde_json::json!({"rows": rows, "runs": runs, "train": tc}))
        .map_err(|e| Error::config(e.to_string(), "report this as a bug"))?;
    crate::checkpoint::write_atomic(&out.join("compare.json"), &json)?;
    let mut plots = vec![];
    for (name, x_label, f) in [
        (
            "val_vs_tokens.png",
            "training tokens (millions)",
            (|v: &ValPoint| v.tokens as f64 / 1e6) as fn(&ValPoint) -> f64,
        ),
        ("val_vs_seconds.png", "wall-clock of training steps (s)", |v: &ValPoint| v.seconds),
    ] {
        let chart = Chart {
            title: "validation loss".into(),
            x_label: x_label.into(),
            y_label: "cross-entropy (nats)".into(),
            series: runs
                .iter()
                .map(|r| Series { label: r.label.clone(), points: r.val.iter().map(|v| (f(v), v.loss)).collect() })
                .collect(),
        };
        let path = out.join(name);
        render(&chart, &path, 800, 500)?;
        plots.push(path);
    }
    Ok((md, plots))
}
