//! `moe merge-lora`: a checkpoint fine-tuned with LoRA adapters (`moe train --init DIR
//! --lora-rank R`) written as a plain checkpoint, each weight W replaced by W + alpha/R * B A,
//! for `moe generate`, `moe export` and `moe serve --checkpoint` (which also merge on the fly).

use anyhow::{bail, Result};
use clap::Args;
use moe_engine::checkpoint::{self, SaveRequest};
use moe_engine::params::Layout;
use std::path::PathBuf;

#[derive(Args)]
pub struct MergeLoraArgs {
    /// Checkpoint directory, or a run directory (its latest checkpoint), trained with LoRA.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output directory (created; must be empty or absent): the merged checkpoint, with the
    /// tokenizer, in `OUT/merged`, and `OUT/latest` naming it.
    #[arg(long)]
    out: PathBuf,
}

pub fn merge_lora(a: MergeLoraArgs) -> Result<()> {
    let ck = checkpoint::load(&a.checkpoint)?;
    let Some(lora) = ck.config.lora.clone() else {
        bail!("{}: has no LoRA adapters (it was not trained with --lora-rank); use it as it is", ck.dir.display())
    };
    if a.out.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        bail!("{}: is not empty; choose a new --out directory", a.out.display());
    }
    let tokenizer = std::fs::read(ck.dir.join("tokenizer.json")).ok();
    let dir = ck.dir.clone();
    let merged = moe_engine::lora::merge_checkpoint(ck);
    let layout = Layout::new(&merged.config);
    let req = SaveRequest {
        config: &merged.config,
        layout: &layout,
        params: &merged.params,
        moments: None,
        state: None,
        tokenizer_json: tokenizer.as_deref(),
        packed: None,
    };
    let written = checkpoint::save(&a.out, "merged", &req, 1)?;
    eprintln!(
        "merged the rank-{} adapters of {} ({}) into {} ({:.2} M parameters)",
        lora.rank,
        dir.display(),
        lora.targets.iter().map(|t| format!("{t:?}").to_lowercase()).collect::<Vec<_>>().join(", "),
        written.display(),
        merged.params.len() as f64 / 1e6
    );
    Ok(())
}
