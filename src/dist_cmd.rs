//! Commands about spreading experts over devices: `moe balance` (placements of a run's measured
//! expert loads across ranks, before and after balancing) and `moe plan` (memory and device
//! count of a model).

use anyhow::{bail, Result};
use clap::Args;
use moe_engine::dist::placement::{balance, max_over_mean, Placement};
use moe_engine::report::RunMetrics;
use std::path::PathBuf;

#[derive(Args)]
pub struct BalanceArgs {
    /// A run directory of `moe train` or one model of `moe compare` (its metrics.jsonl).
    #[arg(long)]
    run: PathBuf,
    /// Ranks (devices) the experts are spread over.
    #[arg(long, default_value_t = 4)]
    ranks: usize,
    /// Extra expert replicas (slots) for hot experts; experts + redundant must divide by ranks.
    #[arg(long, default_value_t = 0)]
    redundant: usize,
    /// Fraction of the run's last steps whose expert loads are used.
    #[arg(long, default_value_t = 0.5)]
    last: f64,
}

pub fn balance_cmd(a: BalanceArgs) -> Result<()> {
    let m = RunMetrics::read(&a.run)?;
    let n = m.train.len();
    let tail = &m.train[n - ((n as f64 * a.last.clamp(0.0, 1.0)).ceil() as usize).clamp(1, n)..];
    let layers = tail[0].expert_load.len();
    if layers == 0 {
        bail!("{}: a dense run has no expert loads", a.run.display());
    }
    let e = tail[0].expert_load[0].len();
    println!("{} MoE layers, {e} experts on {} ranks; loads of the last {} steps\n", layers, a.ranks, tail.len());
    println!(
        "| layer | max/mean expert load | max/mean rank load, contiguous | balanced (moved) | balanced + {} replicas |",
        a.redundant
    );
    println!("|---:|---:|---:|---:|---:|");
    let mut sums = [0.0; 4];
    let mut placements = vec![];
    for l in 0..layers {
        let load: Vec<f64> = (0..e).map(|x| tail.iter().map(|s| s.expert_load[l][x] as f64).sum()).collect();
        let cont = max_over_mean(&Placement::contiguous(e, a.ranks)?.rank_loads(&load));
        let moved = balance(&load, a.ranks, 0)?;
        let mm = max_over_mean(&moved.rank_loads(&load));
        let rep = balance(&load, a.ranks, a.redundant)?;
        let rm = max_over_mean(&rep.rank_loads(&load));
        let v = [max_over_mean(&load), cont, mm, rm];
        sums.iter_mut().zip(v).for_each(|(s, x)| *s += x);
        println!("| {l} | {:.2} | {:.2} | {:.2} | {:.2} |", v[0], v[1], v[2], v[3]);
        placements.push(rep);
    }
    let k = layers as f64;
    println!("| mean | {:.2} | {:.2} | {:.2} | {:.2} |", sums[0] / k, sums[1] / k, sums[2] / k, sums[3] / k);
    println!("\nbalanced placements (experts per rank):");
    for (l, p) in placements.iter().enumerate() {
        let ranks: Vec<String> = p.ranks.iter().map(|r| format!("{r:?}")).collect();
        println!("layer {l}: {}", ranks.join(" "));
    }
    Ok(())
}
