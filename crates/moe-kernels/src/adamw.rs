//! AdamW (decoupled weight decay, PyTorch semantics) over flat parameter buffers.

use rayon::prelude::*;

/// Hyper-parameters of one AdamW update.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Multiplies every gradient before the update (the mean over micro-batches and replicas
    /// times the clip factor), so no separate pass scales the gradient buffer. Applied in f32.
    pub grad_scale: f32,
}

/// One update of p[P] given g[P] (times `h.grad_scale`) and moments m[P], v[P]; `step` counts
/// from 1.
/// `decay` says whether weight decay applies to this buffer (not to norms).
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamW, step: u64, decay: bool) {
    let bc1 = 1.0 - h.beta1.powi(step as i32);
    let bc2 = 1.0 - h.beta2.powi(step as i32);
    let (b1, b2) = (h.beta1 as f32, h.beta2 as f32);
    let lr_t = (h.lr / bc1) as f32;
    let inv_bc2_sqrt = (1.0 / bc2.sqrt()) as f32;
    let eps = h.eps as f32;
    let shrink = if decay { (1.0 - h.lr * h.weight_decay) as f32 } else { 1.0 };
    let gs = h.grad_scale;
    p.par_chunks_mut(8192).zip(g.par_chunks(8192)).zip(m.par_chunks_mut(8192).zip(v.par_chunks_mut(8192))).for_each(
        |((p, g), (m, v))| {
            for i in 0..p.len() {
                let gi = g[i] * gs;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                p[i] = p[i] * shrink - lr_t * m[i] / (v[i].sqrt() * inv_bc2_sqrt + eps);
            }
        },
    );
}

/// Naive twin: the textbook formula, one element at a time, in f64.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update_naive(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamW, step: u64, decay: bool) {
    for i in 0..p.len() {
        let gi = g[i] as f64 * h.grad_scale as f64;
        let mi = h.beta1 * m[i] as f64 + (1.0 - h.beta1) * gi;
        let vi = h.beta2 * v[i] as f64 + (1.0 - h.beta2) * gi * gi;
        let mhat = mi / (1.0 - h.beta1.powi(step as i32));
        let vhat = vi / (1.0 - h.beta2.powi(step as i32));
        let mut pi = p[i] as f64;
        if decay {
            pi -= h.lr * h.weight_decay * pi;
        }
        pi -= h.lr * mhat / (vhat.sqrt() + h.eps);
        p[i] = pi as f32;
        m[i] = mi as f32;
        v[i] = vi as f32;
    }
}
