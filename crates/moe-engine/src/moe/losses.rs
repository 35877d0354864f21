//! Auxiliary losses and routing statistics of one MoE layer.
//!
//! Switch load-balancing loss: `E * sum_e f_e * P_e` with f_e = (assignments to e) / N, counting
//! all K picks (so f sums to K and a perfectly balanced router scores K, as in Hugging Face's
//! `load_balancing_loss_func`) and P_e = mean over tokens of the softmax probability of e.
//! f is a count and carries no gradient; dLoss/dP_e = E * f_e. With `BalanceScope::Global` the
//! f and P of all MoE layers are pooled first (Hugging Face); with `Layer` each layer has its
//! own loss and the model averages them.
//! Router z-loss: mean over tokens of logsumexp(logits)^2 (ST-MoE).

use moe_kernels::Float;

/// Statistics of one MoE layer's forward, returned as values.
#[derive(Clone, Debug, Default)]
pub struct MoeStats {
    /// [E] rows routed to each expert (all K picks).
    pub tokens_per_expert: Vec<u32>,
    /// [E] mean routing probability of each expert.
    pub mean_probs: Vec<f64>,
    /// Tokens routed (N).
    pub tokens: usize,
    /// mean_n logsumexp(logits_n)^2
    pub z_loss: f64,
    /// Mean entropy of the routing distribution (nats).
    pub entropy: f64,
}

impl MoeStats {
    /// This layer's own Switch loss E * sum f_e P_e.
    pub fn switch_loss(&self) -> f64 {
        switch_loss(&self.tokens_per_expert, &self.mean_probs, self.tokens)
    }
    /// max over experts of load / mean load (1 = perfectly balanced).
    pub fn max_over_mean_load(&self) -> f64 {
        let e = self.tokens_per_expert.len() as f64;
        let total: u32 = self.tokens_per_expert.iter().sum();
        let max = *self.tokens_per_expert.iter().max().unwrap_or(&0) as f64;
        if total == 0 {
            0.0
        } else {
            max / (total as f64 / e)
        }
    }
}

/// E * sum_e (counts_e / n) * mean_probs_e.
pub fn switch_loss(counts: &[u32], mean_probs: &[f64], n: usize) -> f64 {
    let e = counts.len() as f64;
    e * counts.iter().zip(mean_probs).map(|(&c, &p)| c as f64 / n as f64 * p).sum::<f64>()
}

/// dLoss/dP_e = E * counts_e / n.
pub fn switch_loss_grad(counts: &[u32], n: usize) -> Vec<f64> {
    let e = counts.len() as f64;
    counts.iter().map(|&c| e * c as f64 / n as f64).collect()
}

/// Fills the statistics from the router outputs: probs[N,E], lse[N].
pub fn routing_stats<T: Float>(s: &mut MoeStats, probs: &[T], lse: &[T], counts: &[u32], n: usize, e: usize) {
    s.tokens_per_expert.clear();
    s.tokens_per_expert.extend_from_slice(counts);
    s.mean_probs.clear();
    s.mean_probs.resize(e, 0.0);
    let mut ent = 0.0;
    for row in probs[..n * e].chunks(e) {
        for (m, &p) in s.mean_probs.iter_mut().zip(row) {
            let p = p.to_f64();
            *m += p;
            if p > 0.0 {
                ent -= p * p.ln();
            }
        }
    }
    s.mean_probs.iter_mut().for_each(|m| *m /= n as f64);
    s.tokens = n;
    s.entropy = ent / n as f64;
    s.z_loss = lse[..n].iter().map(|&l| l.to_f64() * l.to_f64()).sum::<f64>() / n as f64;
}
