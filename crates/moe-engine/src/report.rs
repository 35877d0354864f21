//! Reading runs back: the metrics log of a run directory, plots of one run (loss curves, expert
//! load heatmap, load balance) and comparisons of several runs (validation loss and load
//! balance curves, a summary table).

use crate::error::{Error, Result};
use crate::plot::{render, render_heatmap, Chart, Heatmap, Series};
use crate::train::StepMetrics;
use std::path::{Path, PathBuf};

/// The metrics of one run.
#[derive(Clone, Debug, Default)]
pub struct RunMetrics {
    pub train: Vec<StepMetrics>,
    /// (step, validation loss)
    pub val: Vec<(u64, f64)>,
}

impl RunMetrics {
    /// Reads `DIR/metrics.jsonl` (or a metrics file given directly).
    pub fn read(path: &Path) -> Result<Self> {
        let file = if path.is_dir() { path.join("metrics.jsonl") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file).map_err(Error::io(&file))?;
        let mut m = RunMetrics::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            match v.get("kind").and_then(|k| k.as_str()) {
                Some("train") => {
                    if let Ok(s) = serde_json::from_value::<StepMetrics>(v["m"].clone()) {
                        m.train.push(s);
                    }
                }
                Some("val") => {
                    if let (Some(s), Some(l)) = (v["step"].as_u64(), v["val_loss"].as_f64()) {
                        m.val.push((s, l));
                    }
                }
                _ => {}
            }
        }
        if m.train.is_empty() {
            return Err(Error::Corpus {
                what: format!("{} holds no training metrics", file.display()),
                hint: "pass the run directory of a `moe train` run".into(),
            });
        }
        Ok(m)
    }

    /// Mean over MoE layers of max/mean expert load, averaged over the last `frac` of steps.
    pub fn final_max_over_mean(&self, frac: f64) -> f64 {
        let tail = self.tail(frac);
        let vals: Vec<f64> =
            tail.iter().filter(|m| !m.max_over_mean_load.is_empty()).map(|m| mean(&m.max_over_mean_load)).collect();
        mean(&vals)
    }

    /// Per MoE layer, max/mean of the expert loads summed over the last `frac` of steps (the
    /// right edge of the expert-load heatmap; 1 = perfectly even).
    pub fn final_layer_balance(&self, frac: f64) -> Vec<f64> {
        layer_balance(self.tail(frac))
    }

    pub fn final_dropped(&self, frac: f64) -> f64 {
        mean(&self.tail(frac).iter().map(|m| mean(&m.dropped_fraction)).collect::<Vec<_>>())
    }

    fn tail(&self, frac: f64) -> &[StepMetrics] {
        let n = self.train.len();
        let k = ((n as f64 * frac).ceil() as usize).clamp(1, n);
        &self.train[n - k..]
    }
}

/// Per MoE layer, max/mean of the expert loads summed over `steps` (empty for a dense model).
pub fn layer_balance(steps: &[StepMetrics]) -> Vec<f64> {
    let Some(first) = steps.iter().find(|s| !s.expert_load.is_empty()) else { return vec![] };
    first
        .expert_load
        .iter()
        .enumerate()
        .map(|(l, experts)| {
            let sums: Vec<f64> = (0..experts.len())
                .map(|e| steps.iter().filter_map(|s| s.expert_load.get(l)?.get(e)).map(|&c| c as f64).sum())
                .collect();
            crate::dist::placement::max_over_mean(&sums)
        })
        .collect()
}

/// max / mean rows per rank of an expert-parallel step (None for one process).
fn rank_imbalance(s: &StepMetrics) -> Option<f64> {
    Some(crate::dist::placement::max_over_mean(&s.rank_rows)).filter(|&r| r > 0.0)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Plots of one run into `dir`: loss.png, and for MoE runs expert_load.png (heatmap of each
/// layer's experts' load relative to the mean, over steps) and load_balance.png.
pub fn plot_run(dir: &Path) -> Result<Vec<PathBuf>> {
    let m = RunMetrics::read(dir)?;
    let mut out = vec![];
    let loss = dir.join("loss.png");
    let chart = Chart {
        title: "moe train: loss".into(),
        x_label: "step".into(),
        y_label: "cross-entropy (nats)".into(),
        series: vec![
            Series { label: "train".into(), points: m.train.iter().map(|s| (s.step as f64, s.ce)).collect() },
            Series { label: "validation".into(), points: m.val.iter().map(|&(s, l)| (s as f64, l)).collect() },
        ],
    };
    render(&chart, &loss, 800, 500)?;
    out.push(loss);
    let layers = m.train.iter().map(|s| s.expert_load.len()).max().unwrap_or(0);
    if layers == 0 {
        return Ok(out);
    }
    let heat = dir.join("expert_load.png");
    let e = m.train.iter().find_map(|s| s.expert_load.first().map(|l| l.len())).unwrap_or(0);
    let mut rows = vec![];
    let mut labels = vec![];
    for l in 0..layers {
        for x in 0..e {
            labels.push(format!("L{l} E{x}"));
            rows.push(
                m.train
                    .iter()
                    .map(|s| {
                        let load = &s.expert_load[l];
                        let total: u32 = load.iter().sum();
                        if total == 0 {
                            0.0
                        } else {
                            load[x] as f64 * e as f64 / total as f64
                        }
                    })
                    .collect(),
            );
        }
    }
    let hi = rows.iter().flatten().cloned().fold(2.0f64, f64::max).min(4.0);
    let first = m.train.first().map_or(0, |s| s.step);
    let last = m.train.last().map_or(0, |s| s.step);
    let hm = Heatmap {
        title: "expert load / mean load (layer x expert over training)".into(),
        x_label: "step".into(),
        row_labels: labels,
        x_range: (first.to_string(), last.to_string()),
        values: rows,
        range: (0.0, hi),
    };
    render_heatmap(&hm, &heat, 900, (60 + 10 * layers * e).clamp(300, 900))?;
    out.push(heat);
    let bal = dir.join("load_balance.png");
    let series = (0..layers)
        .map(|l| Series {
            label: format!("layer {l}"),
            points: m.train.iter().map(|s| (s.step as f64, s.max_over_mean_load[l])).collect(),
        })
        .collect();
    render(
        &Chart {
            title: "load balance: max / mean expert load".into(),
            x_label: "step".into(),
            y_label: "max / mean".into(),
            series,
        },
        &bal,
        800,
        500,
    )?;
    out.push(bal);
    Ok(out)
}

/// Compares runs: val_loss.png, load_balance.png and, for expert-parallel runs,
/// rank_balance.png in `out_dir`, and a Markdown table.
pub fn compare_runs(runs: &[(String, PathBuf)], out_dir: &Path) -> Result<String> {
    std::fs::create_dir_all(out_dir).map_err(Error::io(out_dir))?;
    let data: Vec<(String, RunMetrics)> =
        runs.iter().map(|(l, p)| Ok((l.clone(), RunMetrics::read(p)?))).collect::<Result<_>>()?;
    let val = Chart {
        title: "validation loss".into(),
        x_label: "step".into(),
        y_label: "cross-entropy (nats)".into(),
        series: data
            .iter()
            .map(|(l, m)| Series { label: l.clone(), points: m.val.iter().map(|&(s, v)| (s as f64, v)).collect() })
            .collect(),
    };
    render(&val, &out_dir.join("val_loss.png"), 800, 500)?;
    // One series per run of f(step) where it is defined.
    let per_step = |title: &str, f: &dyn Fn(&StepMetrics) -> Option<f64>| Chart {
        title: title.into(),
        x_label: "step".into(),
        y_label: "max / mean".into(),
        series: data
            .iter()
            .map(|(l, m)| Series {
                label: l.clone(),
                points: m.train.iter().filter_map(|s| Some((s.step as f64, f(s)?))).collect(),
            })
            .collect(),
    };
    let load = |s: &StepMetrics| (!s.max_over_mean_load.is_empty()).then(|| mean(&s.max_over_mean_load));
    render(&per_step("max / mean expert load (mean over layers)", &load), &out_dir.join("load_balance.png"), 800, 500)?;
    if data.iter().any(|(_, m)| m.train.iter().any(|s| !s.rank_rows.is_empty())) {
        let chart = per_step("expert parallelism: max / mean expert rows per rank", &rank_imbalance);
        render(&chart, &out_dir.join("rank_balance.png"), 800, 500)?;
    }
    let mut t = String::from("| run | steps | final validation loss | max/mean load (last 20% of steps) | worst layer (summed load, last 20%) | dropped | max/mean rows per rank | tokens/s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (l, m) in &data {
        let last = m.train.last().map_or(0, |s| s.step);
        let vl = m.val.last().map_or(f64::NAN, |v| v.1);
        let tail = m.tail(0.2);
        let tps = mean(&tail.iter().map(|s| s.tokens_per_s).collect::<Vec<_>>());
        let ranks: Vec<f64> = tail.iter().filter_map(rank_imbalance).collect();
        let ranks = if ranks.is_empty() { "-".to_string() } else { format!("{:.2}", mean(&ranks)) };
        t += &format!(
            "| {l} | {last} | {vl:.4} | {:.2} | {:.2} | {:.1}% | {ranks} | {tps:.0} |\n",
            m.final_max_over_mean(0.2),
            m.final_layer_balance(0.2).into_iter().fold(0.0, f64::max),
            100.0 * m.final_dropped(0.2)
        );
    }
    Ok(t)
}
