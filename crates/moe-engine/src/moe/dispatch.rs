//! Dispatch stage: group the router's assignments (token, expert, weight) by expert with a
//! counting sort so each expert's rows are contiguous, drop what exceeds an expert's capacity
//! (by routing weight or by position), and gather the token rows in that order. A token-major
//! index (CSR) of the kept rows serves the combine and the backward. Expert parallelism will
//! insert its all-to-all right after this stage.

use moe_kernels::Float;
use rayon::prelude::*;

/// Marks an assignment that was dropped for capacity.
pub const DROPPED: u32 = u32::MAX;

/// The permutation between token order and expert order (MegaBlocks' vocabulary).
#[derive(Clone, Debug, Default)]
pub struct Routing {
    /// [E] rows kept for each expert.
    pub tokens_per_expert: Vec<u32>,
    /// [E+1] first row of each expert's bin; bins[E] = kept rows.
    pub bins: Vec<usize>,
    /// [R] for each expert-ordered row, its assignment id.
    pub indices: Vec<u32>,
    /// [R] for each assignment, its expert-ordered row, or DROPPED.
    pub positions: Vec<u32>,
    /// [N+1] token-major index: the kept rows of token n are tok_rows[tok_offsets[n]..tok_offsets[n+1]].
    pub tok_offsets: Vec<usize>,
    /// [R] rows grouped by token.
    pub tok_rows: Vec<u32>,
    /// Assignments dropped for capacity.
    pub dropped: usize,
    /// [R] scratch: assignment ids sorted by expert before dropping.
    order: Vec<u32>,
    /// [E+1] scratch: bins before dropping.
    chosen_bins: Vec<usize>,
}

impl Routing {
    /// Buffers for up to `r` assignments of `n` tokens to `e` experts.
    pub fn new(e: usize, n: usize, r: usize) -> Self {
        Routing {
            tokens_per_expert: vec![0; e],
            bins: vec![0; e + 1],
            indices: vec![0; r],
            positions: vec![0; r],
            tok_offsets: vec![0; n + 1],
            tok_rows: vec![0; r],
            dropped: 0,
            order: vec![0; r],
            chosen_bins: vec![0; e + 1],
        }
    }

    /// Kept rows.
    pub fn rows(&self) -> usize {
        *self.bins.last().unwrap_or(&0)
    }

    /// Builds the routing of assignments expert[R], token[R] (weights for the drop policy) for
    /// `n` tokens with at most `capacity` rows per expert.
    pub fn build<T: Float>(
        &mut self,
        expert: &[u32],
        token: &[u32],
        weight: &[T],
        n: usize,
        capacity: usize,
        by_weight: bool,
    ) {
        let e = self.tokens_per_expert.len();
        let r = expert.len();
        // Stable counting sort of the assignments by expert.
        self.chosen_bins.fill(0);
        for &x in expert {
            self.chosen_bins[x as usize + 1] += 1;
        }
        for i in 0..e {
            self.chosen_bins[i + 1] += self.chosen_bins[i];
        }
        self.bins[..e].copy_from_slice(&self.chosen_bins[..e]); // used as cursors
        for (a, &x) in expert.iter().enumerate() {
            self.order[self.bins[x as usize]] = a as u32;
            self.bins[x as usize] += 1;
        }
        // Capacity: keep the first `capacity` of each bin, after ordering it by weight if asked.
        self.positions[..r].fill(DROPPED);
        self.bins[0] = 0;
        self.dropped = 0;
        for i in 0..e {
            let bin = &mut self.order[self.chosen_bins[i]..self.chosen_bins[i + 1]];
            if bin.len() > capacity && by_weight {
                bin.sort_by(|&a, &b| {
                    weight[b as usize]
                        .partial_cmp(&weight[a as usize])
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(a.cmp(&b))
                });
            }
            let kept = bin.len().min(capacity);
            self.dropped += bin.len() - kept;
            self.tokens_per_expert[i] = kept as u32;
            self.bins[i + 1] = self.bins[i] + kept;
            for (j, &a) in bin[..kept].iter().enumerate() {
                let row = self.bins[i] + j;
                self.indices[row] = a;
                self.positions[a as usize] = row as u32;
            }
        }
        // Token-major index of the kept rows.
        self.tok_offsets[..=n].fill(0);
        for (a, &t) in token.iter().enumerate() {
            if self.positions[a] != DROPPED {
                self.tok_offsets[t as usize + 1] += 1;
            }
        }
        for i in 0..n {
            self.tok_offsets[i + 1] += self.tok_offsets[i];
        }
        self.fill_token_rows(token, n);
    }

    fn fill_token_rows(&mut self, token: &[u32], n: usize) {
        // tok_offsets[t] is the start of token t; use it as a cursor while scanning rows in
        // assignment order (the offsets are restored by the shift below).
        for (&row, &t) in self.positions.iter().zip(token) {
            if row != DROPPED {
                let t = t as usize;
                let at = self.tok_offsets[t];
                self.tok_rows[at] = row;
                self.tok_offsets[t] += 1;
            }
        }
        // Each offset now points at the end of its token: shift right by one.
        for i in (1..=n).rev() {
            self.tok_offsets[i] = self.tok_offsets[i - 1];
        }
        self.tok_offsets[0] = 0;
    }
}

/// xs[rows,C] = x[token of each kept row].
pub fn dispatch_forward<T: Float>(xs: &mut [T], x: &[T], rt: &Routing, token: &[u32], c: usize) {
    let rows = rt.rows();
    xs[..rows * c].par_chunks_mut(c).zip(rt.indices[..rows].par_iter()).for_each(|(row, &a)| {
        let n = token[a as usize] as usize;
        row.copy_from_slice(&x[n * c..(n + 1) * c]);
    });
}

/// dx[N,C] += sum over a token's kept rows of dxs[rows,C].
pub fn dispatch_backward<T: Float>(dx: &mut [T], dxs: &[T], rt: &Routing, c: usize) {
    dx.par_chunks_mut(c).enumerate().for_each(|(n, d)| {
        for &row in &rt.tok_rows[rt.tok_offsets[n]..rt.tok_offsets[n + 1]] {
            let row = row as usize;
            for (dv, &g) in d.iter_mut().zip(&dxs[row * c..(row + 1) * c]) {
                *dv += g;
            }
        }
    });
}
