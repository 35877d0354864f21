//! Auxiliary losses and routing statistics of one MoE layer.
//!
//! Switch load-balancing loss: `E * sum_e f_e * P_e` with f_e = (assignments the router chose
//! for e) / tokens, counting all K picks (so f sums to K and a perfectly balanced router scores
//! K, as in Hugging Face's `load_balancing_loss_func`) and P_e = mean over tokens of the routing
//! affinity `probs` (softmax; sigmoid normalised per token for `sigmoid_group`). f is a count
//! and carries no gradient: dLoss/dP_e = E * f_e. The statistics are kept per sequence so the
//! model can pool them over layers (Hugging Face), per layer, or per sequence (DeepSeek-V3).
//! Router z-loss: mean over tokens of logsumexp(logits)^2 (ST-MoE).

use moe_kernels::Float;

/// Statistics of one MoE layer's forward, returned as values.
#[derive(Clone, Debug, Default)]
pub struct MoeStats {
    /// [E] assignments the router chose per expert (all K picks).
    pub tokens_per_expert: Vec<u32>,
    /// [E] rows each expert processed (after capacity dropping).
    pub kept_per_expert: Vec<u32>,
    /// [S,E] chosen assignments per sequence and expert.
    pub seq_counts: Vec<u32>,
    /// [S,E] mean affinity per sequence and expert.
    pub seq_probs: Vec<f64>,
    /// [E] mean affinity over all tokens.
    pub mean_probs: Vec<f64>,
    /// Tokens (N) and sequences (S) of the batch.
    pub tokens: usize,
    pub seqs: usize,
    /// Assignments made and dropped for capacity.
    pub assignments: usize,
    pub dropped: usize,
    /// mean_n logsumexp(logits_n)^2
    pub z_loss: f64,
    /// Mean entropy of the per-token affinity distribution (nats).
    pub entropy: f64,
}

impl MoeStats {
    /// This layer's own Switch loss over the whole batch.
    pub fn switch_loss(&self) -> f64 {
        switch_loss(&self.tokens_per_expert, &self.mean_probs, self.tokens)
    }
    /// Mean over sequences of the per-sequence Switch loss.
    pub fn sequence_switch_loss(&self) -> f64 {
        let (e, t) = (self.mean_probs.len(), self.tokens / self.seqs.max(1));
        (0..self.seqs)
            .map(|s| switch_loss(&self.seq_counts[s * e..(s + 1) * e], &self.seq_probs[s * e..(s + 1) * e], t))
            .sum::<f64>()
            / self.seqs.max(1) as f64
    }
    /// max over experts of processed rows / their mean (1 = perfectly balanced).
    pub fn max_over_mean_load(&self) -> f64 {
        max_over_mean(&self.kept_per_expert)
    }
    /// Fraction of assignments dropped for capacity.
    pub fn dropped_fraction(&self) -> f64 {
        if self.assignments == 0 {
            0.0
        } else {
            self.dropped as f64 / self.assignments as f64
        }
    }
}

/// max / mean of a load vector (0 when empty).
pub fn max_over_mean(load: &[u32]) -> f64 {
    let total: u64 = load.iter().map(|&c| c as u64).sum();
    if total == 0 {
        return 0.0;
    }
    *load.iter().max().unwrap_or(&0) as f64 / (total as f64 / load.len() as f64)
}

/// E * sum_e (counts_e / n) * probs_e.
pub fn switch_loss(counts: &[u32], probs: &[f64], n: usize) -> f64 {
    let e = counts.len() as f64;
    e * counts.iter().zip(probs).map(|(&c, &p)| c as f64 / n as f64 * p).sum::<f64>()
}

/// dLoss/dP_e = E * counts_e / n.
pub fn switch_loss_grad(counts: &[u32], n: usize) -> Vec<f64> {
    let e = counts.len() as f64;
    counts.iter().map(|&c| e * c as f64 / n as f64).collect()
}

/// Fills the statistics: probs[N,E], lse[N], chosen experts expert[R] of tokens token[R], kept
/// rows per expert, dropped count; sequences of `t` tokens. `logits`[N,E] when `probs` is their
/// softmax: the entropy then needs no logarithm per expert (-p ln p = p (lse - l)).
#[allow(clippy::too_many_arguments)]
pub fn routing_stats<T: Float>(
    s: &mut MoeStats,
    probs: &[T],
    logits: Option<&[T]>,
    lse: &[T],
    expert: &[u32],
    token: &[u32],
    kept: &[u32],
    dropped: usize,
    n: usize,
    t: usize,
    e: usize,
) {
    let seqs = n.div_ceil(t);
    s.tokens = n;
    s.seqs = seqs;
    s.assignments = expert.len();
    s.dropped = dropped;
    s.kept_per_expert.clear();
    s.kept_per_expert.extend_from_slice(kept);
    s.tokens_per_expert.clear();
    s.tokens_per_expert.resize(e, 0);
    s.seq_counts.clear();
    s.seq_counts.resize(seqs * e, 0);
    for (&x, &tk) in expert.iter().zip(token) {
        s.tokens_per_expert[x as usize] += 1;
        s.seq_counts[(tk as usize / t) * e + x as usize] += 1;
    }
    s.seq_probs.clear();
    s.seq_probs.resize(seqs * e, 0.0);
    let mut ent = 0.0;
    for (i, row) in probs[..n * e].chunks(e).enumerate() {
        let acc = &mut s.seq_probs[(i / t) * e..(i / t + 1) * e];
        for (m, &p) in acc.iter_mut().zip(row) {
            *m += p.to_f64();
        }
        ent += match logits {
            Some(lg) => {
                let z = lse[i].to_f64();
                row.iter().zip(&lg[i * e..(i + 1) * e]).map(|(&p, &l)| p.to_f64() * (z - l.to_f64())).sum::<f64>()
            }
            None => row.iter().map(|&p| p.to_f64()).filter(|&p| p > 0.0).map(|p| -p * p.ln()).sum(),
        };
    }
    s.mean_probs.clear();
    s.mean_probs.resize(e, 0.0);
    for (i, v) in s.seq_probs.iter_mut().enumerate() {
        s.mean_probs[i % e] += *v / n as f64;
        *v /= t as f64;
    }
    s.entropy = ent / n as f64;
    s.z_loss = lse[..n].iter().map(|&l| l.to_f64() * l.to_f64()).sum::<f64>() / n as f64;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entropy from the logits (softmax affinities) equals -sum p ln p.
    #[test]
    fn entropy_from_logits_equals_the_direct_sum() {
        let (n, e) = (6, 5);
        let logits: Vec<f64> = (0..n * e).map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.7).collect();
        let (mut probs, mut lse) = (vec![0.0; n * e], vec![0.0; n]);
        for ((p, l), z) in probs.chunks_mut(e).zip(logits.chunks(e)).zip(&mut lse) {
            *z = moe_kernels::softmax::softmax_row_lse(p, l);
        }
        let (expert, token) = (vec![0u32; n], (0..n as u32).collect::<Vec<_>>());
        let kept = vec![n as u32, 0, 0, 0, 0];
        let (mut a, mut b) = (MoeStats::default(), MoeStats::default());
        routing_stats(&mut a, &probs, Some(&logits), &lse, &expert, &token, &kept, 0, n, 3, e);
        routing_stats(&mut b, &probs, None, &lse, &expert, &token, &kept, 0, n, 3, e);
        assert!(b.entropy > 0.1 && b.entropy < (e as f64).ln());
        assert!((a.entropy - b.entropy).abs() < 1e-12, "{} vs {}", a.entropy, b.entropy);
    }
}
