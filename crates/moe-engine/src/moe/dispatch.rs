//! Dispatch stage: group the N*K (token, slot) assignments by expert with a counting sort, so
//! each expert's rows are contiguous, and gather the token rows in that order. Expert
//! parallelism will insert its all-to-all right after this stage.

use moe_kernels::Float;
use rayon::prelude::*;

/// The permutation between token order and expert order (MegaBlocks' vocabulary).
#[derive(Clone, Debug, Default)]
pub struct Routing {
    /// [E] rows routed to each expert.
    pub tokens_per_expert: Vec<u32>,
    /// [E+1] first row of each expert's bin; bins[E] = R.
    pub bins: Vec<usize>,
    /// [R] for each expert-ordered row, the assignment id n*K + slot.
    pub indices: Vec<u32>,
    /// [R] for each assignment n*K + slot, its expert-ordered row.
    pub positions: Vec<u32>,
}

impl Routing {
    pub fn new(e: usize, r: usize) -> Self {
        Routing { tokens_per_expert: vec![0; e], bins: vec![0; e + 1], indices: vec![0; r], positions: vec![0; r] }
    }
}

/// Counting sort of topk_ids[N*K] into `routing`, then xs[R,C] = x[token of row].
/// Stable: within an expert, rows keep token order.
pub fn dispatch_forward<T: Float>(rt: &mut Routing, xs: &mut [T], x: &[T], topk_ids: &[u32], k: usize, c: usize) {
    let e = rt.tokens_per_expert.len();
    let r = topk_ids.len();
    rt.tokens_per_expert.fill(0);
    for &id in topk_ids {
        rt.tokens_per_expert[id as usize] += 1;
    }
    rt.bins[0] = 0;
    for i in 0..e {
        rt.bins[i + 1] = rt.bins[i] + rt.tokens_per_expert[i] as usize;
    }
    let mut cursor: Vec<usize> = rt.bins[..e].to_vec(); // E entries: not in the token loop
    for (a, &id) in topk_ids.iter().enumerate() {
        let pos = cursor[id as usize];
        cursor[id as usize] += 1;
        rt.indices[pos] = a as u32;
        rt.positions[a] = pos as u32;
    }
    xs[..r * c].par_chunks_mut(c).zip(rt.indices[..r].par_iter()).for_each(|(row, &a)| {
        let n = a as usize / k;
        row.copy_from_slice(&x[n * c..(n + 1) * c]);
    });
}

/// dx[N,C] += sum over a token's K rows of dxs[R,C].
pub fn dispatch_backward<T: Float>(dx: &mut [T], dxs: &[T], rt: &Routing, k: usize, c: usize) {
    dx.par_chunks_mut(c).enumerate().for_each(|(n, d)| {
        for slot in 0..k {
            let pos = rt.positions[n * k + slot] as usize;
            for (dv, &g) in d.iter_mut().zip(&dxs[pos * c..(pos + 1) * c]) {
                *dv += g;
            }
        }
    });
}
