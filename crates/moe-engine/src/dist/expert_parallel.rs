//! Expert parallelism inside one MoE layer: the experts are split evenly over the ranks (rank
//! r holds experts [r*E/P, (r+1)*E/P)); after dispatch each rank's rows (already grouped by
//! expert, so grouped by owner) go to their owners with one all-to-all, are regrouped by local
//! expert, run through the rank's experts, and return with a second all-to-all before combine.
//! The backward runs the same exchange on the output gradients. Only the expert stage is
//! replaced; router, dispatch and combine stay local to the rank's tokens.

use super::comm::Comm;
use crate::moe::experts::{experts_backward, experts_forward, ExpertGrads, ExpertWeights};
use moe_kernels::Float;
use std::sync::Arc;

/// Which experts a rank holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub ranks: usize,
}

impl Shard {
    /// Everything on one rank.
    pub const SINGLE: Shard = Shard { rank: 0, ranks: 1 };
    /// El: experts per rank.
    pub fn local_experts(&self, e: usize) -> usize {
        e / self.ranks
    }
    /// The first expert this rank holds.
    pub fn first_expert(&self, e: usize) -> usize {
        self.rank * self.local_experts(e)
    }
}

/// Bytes of a slice of f32 or f64.
fn bytes<T: Float>(s: &[T]) -> &[u8] {
    // SAFETY: Float is implemented for f32 and f64 only: plain values without padding.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
}

fn bytes_mut<T: Float>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `bytes`; every bit pattern is a valid f32 or f64.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut u8, std::mem::size_of_val(s)) }
}

fn grow<T: Float>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::ZERO);
    }
}

/// Exchange state and rank-local expert activations of one MoE layer (grown on demand to the
/// largest number of rows a rank has received; no allocation once warm).
pub struct ExpertParallel<T> {
    pub comm: Arc<dyn Comm>,
    /// P, El, C, F
    ranks: usize,
    el: usize,
    c: usize,
    f: usize,
    /// [P] rows this rank sends to / receives from each rank.
    send_rows: Vec<usize>,
    recv_rows: Vec<usize>,
    /// [P*El] rows from source s for local expert j (as sent: u32).
    recv_counts: Vec<u32>,
    /// [El+1] bins of the received rows regrouped by local expert.
    pub bins: Vec<usize>,
    /// [Rl] for each local (expert-major) row, its row in the received (source-major) order.
    perm: Vec<u32>,
    /// [Rl, C] staging buffer in source-major order.
    stage: Vec<T>,
    /// [Rl, C] and [Rl, F]: the local expert stage's inputs, activations and gradients.
    xs: Vec<T>,
    ys: Vec<T>,
    g: Vec<T>,
    u: Vec<T>,
    h: Vec<T>,
    dys: Vec<T>,
    dxs: Vec<T>,
    dh: Vec<T>,
    dg: Vec<T>,
    du: Vec<T>,
    /// Bytes this rank sent in all-to-alls of activations and gradients (to every rank,
    /// itself included), and of those, to other ranks.
    pub bytes_sent: u64,
    pub bytes_sent_remote: u64,
    /// Rows this rank's experts processed (forward), and seconds spent in the layer's
    /// all-to-alls, waiting for slower ranks included.
    pub rows_processed: u64,
    pub comm_seconds: f64,
}

impl<T: Float> ExpertParallel<T> {
    /// Exchange state for E experts of width F over the ranks of `comm` (E divisible by P).
    pub fn new(comm: Arc<dyn Comm>, e: usize, c: usize, f: usize) -> Self {
        let ranks = comm.size();
        ExpertParallel {
            comm,
            ranks,
            el: e / ranks,
            c,
            f,
            send_rows: vec![0; ranks],
            recv_rows: vec![0; ranks],
            recv_counts: vec![0; e],
            bins: vec![0; e / ranks + 1],
            perm: vec![],
            stage: vec![],
            xs: vec![],
            ys: vec![],
            g: vec![],
            u: vec![],
            h: vec![],
            dys: vec![],
            dxs: vec![],
            dh: vec![],
            dg: vec![],
            du: vec![],
            bytes_sent: 0,
            bytes_sent_remote: 0,
            rows_processed: 0,
            comm_seconds: 0.0,
        }
    }

    /// Rows received for the rank's experts in the last forward.
    pub fn local_rows(&self) -> usize {
        self.bins[self.el]
    }

    /// Sends `rows` (counts per rank, in rows of C) and receives into `recv`; ends the job on
    /// a communication failure (a rank that died or disagrees).
    fn all_to_all(&mut self, send: &[T], send_rows: &[usize], recv: &mut [T], recv_rows: &[usize]) {
        let w = self.c * std::mem::size_of::<T>();
        let sc: Vec<usize> = send_rows.iter().map(|r| r * w).collect();
        let rc: Vec<usize> = recv_rows.iter().map(|r| r * w).collect();
        let total: usize = sc.iter().sum();
        self.bytes_sent += total as u64;
        self.bytes_sent_remote += (total - sc[self.comm.rank()]) as u64;
        let (ns, nr) = (send_rows.iter().sum::<usize>() * self.c, recv_rows.iter().sum::<usize>() * self.c);
        let t0 = std::time::Instant::now();
        if let Err(e) = self.comm.all_to_all_v(bytes(&send[..ns]), &sc, bytes_mut(&mut recv[..nr]), &rc) {
            self.comm.abort(&format!("expert-parallel all-to-all failed: {e}"));
        }
        self.comm_seconds += t0.elapsed().as_secs_f64();
    }

    /// ys[R,C] (this rank's rows in global expert order) = experts(xs[R,C]), the experts living
    /// on their owners. `tokens_per_expert`[E] and `bins`[E+1] describe xs; `w` holds the
    /// rank's El experts.
    pub fn forward(&mut self, ys: &mut [T], xs: &[T], tokens_per_expert: &[u32], bins: &[usize], w: ExpertWeights<T>) {
        let (p, el, c, f) = (self.ranks, self.el, self.c, self.f);
        // Counts: rank q learns how many rows of each of its experts every rank sends.
        let mut counts = vec![0u8; 4 * p * el];
        let per = vec![4 * el; p];
        let sent: Vec<u8> = tokens_per_expert.iter().flat_map(|x| x.to_le_bytes()).collect();
        if let Err(e) = self.comm.all_to_all_v(&sent, &per, &mut counts, &per) {
            self.comm.abort(&format!("expert-parallel count exchange failed: {e}"));
        }
        for (dst, b) in self.recv_counts.iter_mut().zip(counts.chunks_exact(4)) {
            *dst = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        for q in 0..p {
            self.send_rows[q] = bins[(q + 1) * el] - bins[q * el];
            self.recv_rows[q] = self.recv_counts[q * el..(q + 1) * el].iter().map(|&x| x as usize).sum();
        }
        let rl: usize = self.recv_rows.iter().sum();
        self.rows_processed += rl as u64;
        for v in [&mut self.stage, &mut self.xs, &mut self.ys, &mut self.dys, &mut self.dxs] {
            grow(v, rl * c);
        }
        for v in [&mut self.g, &mut self.u, &mut self.h, &mut self.dh, &mut self.dg, &mut self.du] {
            grow(v, rl * f);
        }
        self.perm.resize(rl, 0);
        let mut stage = std::mem::take(&mut self.stage);
        let (sr, rr) = (self.send_rows.clone(), self.recv_rows.clone());
        self.all_to_all(xs, &sr, &mut stage, &rr);
        // Regroup source-major (source, expert) runs into expert-major (expert, source) order.
        let mut src_start = vec![0usize; p];
        for s in 1..p {
            src_start[s] = src_start[s - 1] + self.recv_rows[s - 1];
        }
        let mut row = 0;
        for j in 0..el {
            self.bins[j] = row;
            for (s, &first) in src_start.iter().enumerate() {
                let before: usize = self.recv_counts[s * el..s * el + j].iter().map(|&x| x as usize).sum();
                let start = first + before;
                for i in 0..self.recv_counts[s * el + j] as usize {
                    self.perm[row] = (start + i) as u32;
                    row += 1;
                }
            }
        }
        self.bins[el] = row;
        for (r, &src) in self.perm.iter().enumerate() {
            let src = src as usize;
            self.xs[r * c..(r + 1) * c].copy_from_slice(&stage[src * c..(src + 1) * c]);
        }
        experts_forward(&mut self.ys, &mut self.g, &mut self.u, &mut self.h, &self.xs, w, &self.bins, c, f);
        for (r, &src) in self.perm.iter().enumerate() {
            let src = src as usize;
            stage[src * c..(src + 1) * c].copy_from_slice(&self.ys[r * c..(r + 1) * c]);
        }
        self.all_to_all(&stage, &rr, ys, &sr);
        self.stage = stage;
    }

    /// dxs[R,C] (overwritten) from dys[R,C], both in this rank's global expert order; the
    /// gradients of the rank's experts accumulate into `gw`.
    pub fn backward(&mut self, dxs: &mut [T], gw: ExpertGrads<T>, dys: &[T], w: ExpertWeights<T>) {
        let (c, f) = (self.c, self.f);
        let mut stage = std::mem::take(&mut self.stage);
        let (sr, rr) = (self.send_rows.clone(), self.recv_rows.clone());
        self.all_to_all(dys, &sr, &mut stage, &rr);
        for (r, &src) in self.perm.iter().enumerate() {
            let src = src as usize;
            self.dys[r * c..(r + 1) * c].copy_from_slice(&stage[src * c..(src + 1) * c]);
        }
        let scratch = [&mut self.dh[..], &mut self.dg[..], &mut self.du[..]];
        experts_backward(
            &mut self.dxs,
            gw,
            &self.dys,
            &self.xs,
            w,
            &self.g,
            &self.u,
            &self.h,
            scratch,
            &self.bins,
            c,
            f,
        );
        for (r, &src) in self.perm.iter().enumerate() {
            let src = src as usize;
            stage[src * c..(src + 1) * c].copy_from_slice(&self.dxs[r * c..(r + 1) * c]);
        }
        self.all_to_all(&stage, &rr, dxs, &sr);
        self.stage = stage;
    }
}
