//! Live expert rebalancing of an expert-parallel run (DeepSeek's EPLB, applied while training):
//! every `rebalance_every` steps the experts of each MoE layer are re-placed for the global
//! loads routed since the last placement (`placement::balance` with `redundant_experts` extra
//! slots for replicas of hot experts); weights and AdamW moments move to their new ranks and
//! the layers' exchanges follow the new placement. Every rank computes the same placement from
//! the same pooled loads, so nothing but the experts travels. The training itself is unchanged.

use crate::config::ModelConfig;
use crate::dist::migrate::migrate;
use crate::dist::placement::{balance, max_over_mean};
use crate::dist::{Placement, Shard};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::params::Layout;
use crate::train::{Rebalanced, StepMetrics, TrainConfig, Trainer, NORM_CHUNK};
use std::sync::Arc;

/// Checks the rebalancing settings of a job of `ranks` ranks.
pub fn check(cfg: &ModelConfig, tc: &TrainConfig, ranks: usize) -> Result<()> {
    if tc.rebalance_every == 0 {
        return Ok(());
    }
    let (e, r) = (cfg.num_local_experts, tc.redundant_experts);
    if e == 0 {
        return Err(Error::config("--rebalance-every needs an MoE model", "drop --rebalance-every for a dense model"));
    }
    if !(e + r).is_multiple_of(ranks) || r > e * (ranks - 1) {
        return Err(Error::config(
            format!("{e} experts plus {r} redundant replicas do not fill {ranks} ranks evenly"),
            "choose --redundant-experts so that experts + redundant is a multiple of the ranks",
        ));
    }
    Ok(())
}

impl Trainer {
    /// Adds the step's global expert loads to the window and, when due, re-places the experts.
    pub(crate) fn maybe_rebalance(&mut self, met: &mut StepMetrics) -> Result<()> {
        let every = self.state.train.rebalance_every;
        if self.dist.is_none() || every == 0 || met.expert_load.is_empty() {
            return Ok(());
        }
        if self.load_window.is_empty() {
            self.load_window = met.expert_load.iter().map(|l| vec![0.0; l.len()]).collect();
        }
        for (w, l) in self.load_window.iter_mut().zip(&met.expert_load) {
            w.iter_mut().zip(l).for_each(|(w, &c)| *w += c as f64);
        }
        if !self.state.step.is_multiple_of(every) {
            return Ok(());
        }
        met.rebalanced = Some(self.rebalance()?);
        Ok(())
    }

    /// Re-places the experts for the loads of the window and moves them.
    fn rebalance(&mut self) -> Result<Rebalanced> {
        let Some(d) = self.dist.clone() else { return Ok(Rebalanced::default()) };
        let (cfg, p) = (self.model.cfg.clone(), d.shard.ranks);
        let e = cfg.num_local_experts;
        let window = std::mem::take(&mut self.load_window);
        let placements: Vec<Placement> =
            window.iter().map(|load| balance(load, p, self.state.train.redundant_experts)).collect::<Result<_>>()?;
        let mean_over_layers = |shard: &Shard| {
            let v = window.iter().enumerate().map(|(l, load)| max_over_mean(&shard.placement(l, e).rank_loads(load)));
            v.sum::<f64>() / window.len() as f64
        };
        let new = Shard { rank: d.shard.rank, ranks: p, placements: Some(Arc::new(placements)) };
        let stats = Rebalanced {
            steps: self.state.train.rebalance_every,
            before: mean_over_layers(&d.shard),
            after: mean_over_layers(&new),
        };
        let layout = Layout::sharded(&cfg, &new);
        let moved =
            migrate(&*d.comm, (&d.shard, &self.model.layout), (&new, &layout), &[&self.params, &self.m, &self.v])
                .unwrap_or_else(|e| d.comm.abort(&e.to_string()));
        let [params, m, v]: [Vec<f32>; 3] = moved.try_into().unwrap_or_else(|_| unreachable!("three buffers moved"));
        (self.params, self.m, self.v) = (params, m, v);
        self.grads = moe_kernels::buffer::zeroed(layout.total);
        self.norm_parts = vec![0.0; layout.grad_range().len().div_ceil(NORM_CHUNK)];
        self.model = Model::sharded(cfg, new.clone())?;
        self.reps.reps[0].acts.attach_expert_parallel(&self.model.cfg, d.comm.clone(), &new);
        if let Some(dist) = self.dist.as_mut() {
            dist.shard = new;
        }
        Ok(stats)
    }
}
