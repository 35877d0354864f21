//! Expert parallelism inside one MoE layer: the experts are placed on the ranks (by default
//! rank r holds experts [r*E/P, (r+1)*E/P); a balanced placement moves experts and gives hot
//! ones several replicas, each taking an even share of every rank's rows). After dispatch
//! each rank's rows (grouped by expert) go to the slots that host their experts with one
//! all-to-all, are regrouped by local slot, run through the rank's experts, and return with a
//! second all-to-all before combine.
//! The backward runs the same exchange on the output gradients. Only the expert stage is
//! replaced; router, dispatch and combine stay local to the rank's tokens.

use super::comm::Comm;
use super::placement::Placement;
use crate::moe::experts::{experts_backward, experts_forward, ExpertGrads, ExpertWeights};
use moe_kernels::Float;
use std::sync::Arc;

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
    /// P, this rank, S (expert slots per rank), C, F
    ranks: usize,
    rank: usize,
    el: usize,
    c: usize,
    f: usize,
    /// [E] the (rank, slot) of every replica of each expert.
    hosts: Vec<Vec<(usize, usize)>>,
    /// The placement is contiguous without replicas: rows in expert order are already in
    /// send order.
    identity: bool,
    /// [P*S] for each destination slot, the range (first row, rows) of this rank's rows in
    /// expert order that go to it: an expert's rows are split evenly over its replicas.
    send_ranges: Vec<(usize, usize)>,
    /// [P] rows this rank sends to / receives from each rank.
    send_rows: Vec<usize>,
    recv_rows: Vec<usize>,
    /// [P*S] rows from source s for local slot j (as sent: u32).
    recv_counts: Vec<u32>,
    /// Scratch of the exchanges: [P] byte counts each way, [P] first received row of each
    /// source, the counts as bytes ([P*S] sent, [P*S] received).
    sc: Vec<usize>,
    rc: Vec<usize>,
    src_start: Vec<usize>,
    count_send: Vec<u8>,
    count_recv: Vec<u8>,
    /// [S+1] bins of the received rows regrouped by local slot.
    pub bins: Vec<usize>,
    /// [Rl] for each local (slot-major) row, its row in the received (source-major) order.
    perm: Vec<u32>,
    /// [R, C] this rank's rows in send order (unless `identity`); [Rl, C] received rows in
    /// source-major order.
    out: Vec<T>,
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
    /// Exchange state for the experts of width F placed by `placement` over the ranks of `comm`.
    pub fn new(comm: Arc<dyn Comm>, placement: &Placement, c: usize, f: usize) -> Self {
        let (ranks, rank) = (comm.size(), comm.rank());
        let e = placement.replicas.len();
        let el = placement.ranks[0].len();
        let identity = placement.ranks.iter().flatten().copied().eq(0..e);
        ExpertParallel {
            comm,
            ranks,
            rank,
            el,
            c,
            f,
            hosts: (0..e).map(|x| placement.hosts(x)).collect(),
            identity,
            send_ranges: vec![(0, 0); ranks * el],
            send_rows: vec![0; ranks],
            recv_rows: vec![0; ranks],
            recv_counts: vec![0; ranks * el],
            sc: vec![0; ranks],
            rc: vec![0; ranks],
            src_start: vec![0; ranks],
            count_send: vec![0; 4 * ranks * el],
            count_recv: vec![0; 4 * ranks * el],
            bins: vec![0; el + 1],
            perm: vec![],
            out: vec![],
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

    /// Continues the traffic counters of the layer's previous exchange (a new placement).
    pub fn carry_counters(&mut self, old: &Self) {
        self.bytes_sent = old.bytes_sent;
        self.bytes_sent_remote = old.bytes_sent_remote;
        self.rows_processed = old.rows_processed;
        self.comm_seconds = old.comm_seconds;
    }

    /// Rows received for the rank's experts in the last forward.
    pub fn local_rows(&self) -> usize {
        self.bins[self.el]
    }

    /// Sends this rank's rows to the experts' owners (`back` = false: send_rows out, recv_rows
    /// in) or returns them (`back` = true); ends the job on a communication failure (a rank that
    /// died or disagrees).
    fn all_to_all(&mut self, send: &[T], recv: &mut [T], back: bool) {
        let w = self.c * std::mem::size_of::<T>();
        let (out_rows, in_rows) =
            if back { (&self.recv_rows, &self.send_rows) } else { (&self.send_rows, &self.recv_rows) };
        self.sc.iter_mut().zip(out_rows).for_each(|(b, r)| *b = r * w);
        self.rc.iter_mut().zip(in_rows).for_each(|(b, r)| *b = r * w);
        let total: usize = self.sc.iter().sum();
        self.bytes_sent += total as u64;
        self.bytes_sent_remote += (total - self.sc[self.comm.rank()]) as u64;
        let ns = total / std::mem::size_of::<T>();
        let nr = self.rc.iter().sum::<usize>() / std::mem::size_of::<T>();
        let t0 = std::time::Instant::now();
        if let Err(e) = self.comm.all_to_all_v(bytes(&send[..ns]), &self.sc, bytes_mut(&mut recv[..nr]), &self.rc) {
            self.comm.abort(&format!("expert-parallel all-to-all failed: {e}"));
        }
        self.comm_seconds += t0.elapsed().as_secs_f64();
    }

    /// `dst`[R,C] in send order from `src`[R,C] in expert order (`back`: the reverse).
    fn reorder(&self, dst: &mut [T], src: &[T], back: bool) {
        let c = self.c;
        let mut row = 0;
        for &(first, len) in &self.send_ranges {
            let (to, from) = if back { (first, row) } else { (row, first) };
            dst[to * c..(to + len) * c].copy_from_slice(&src[from * c..(from + len) * c]);
            row += len;
        }
    }

    /// Sends this rank's rows in expert order `rows` to their slots, receiving into `stage`.
    fn send_out(&mut self, rows: &[T], stage: &mut [T]) {
        if self.identity {
            return self.all_to_all(rows, stage, false);
        }
        let mut out = std::mem::take(&mut self.out);
        self.reorder(&mut out, rows, false);
        self.all_to_all(&out, stage, false);
        self.out = out;
    }

    /// Returns the rows in `stage` to their senders, into `rows` in expert order.
    fn send_back(&mut self, stage: &[T], rows: &mut [T]) {
        if self.identity {
            return self.all_to_all(stage, rows, true);
        }
        let mut out = std::mem::take(&mut self.out);
        self.all_to_all(stage, &mut out, true);
        self.reorder(rows, &out, true);
        self.out = out;
    }

    /// ys[R,C] (this rank's rows in global expert order) = experts(xs[R,C]), the experts living
    /// on the ranks that host them; an expert with several replicas gets an even share of the
    /// rows on each. `bins`[E+1] describes xs; `w` holds the rank's S expert slots.
    pub fn forward(&mut self, ys: &mut [T], xs: &[T], bins: &[usize], w: ExpertWeights<T>) {
        let (p, el, c, f) = (self.ranks, self.el, self.c, self.f);
        for (x, hosts) in self.hosts.iter().enumerate() {
            let (mut row, n, k) = (bins[x], bins[x + 1] - bins[x], hosts.len());
            for i in 0..k {
                let len = n / k + usize::from(i < n % k);
                let (q, j) = hosts[(i + self.rank) % k];
                self.send_ranges[q * el + j] = (row, len);
                row += len;
            }
        }
        // Counts: rank q learns how many rows of each of its slots every rank sends.
        for (dst, &(_, len)) in self.count_send.chunks_exact_mut(4).zip(&self.send_ranges) {
            dst.copy_from_slice(&(len as u32).to_le_bytes());
        }
        self.sc.fill(4 * el);
        if let Err(e) = self.comm.all_to_all_v(&self.count_send, &self.sc, &mut self.count_recv, &self.sc) {
            self.comm.abort(&format!("expert-parallel count exchange failed: {e}"));
        }
        for (dst, b) in self.recv_counts.iter_mut().zip(self.count_recv.chunks_exact(4)) {
            *dst = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        for q in 0..p {
            self.send_rows[q] = self.send_ranges[q * el..(q + 1) * el].iter().map(|r| r.1).sum();
            self.recv_rows[q] = self.recv_counts[q * el..(q + 1) * el].iter().map(|&x| x as usize).sum();
        }
        let rl: usize = self.recv_rows.iter().sum();
        self.rows_processed += rl as u64;
        if !self.identity {
            grow(&mut self.out, bins[self.hosts.len()] * c);
        }
        for v in [&mut self.stage, &mut self.xs, &mut self.ys, &mut self.dys, &mut self.dxs] {
            grow(v, rl * c);
        }
        for v in [&mut self.g, &mut self.u, &mut self.h, &mut self.dh, &mut self.dg, &mut self.du] {
            grow(v, rl * f);
        }
        self.perm.resize(rl, 0);
        let mut stage = std::mem::take(&mut self.stage);
        self.send_out(xs, &mut stage);
        // Regroup source-major (source, expert) runs into expert-major (expert, source) order.
        self.src_start[0] = 0;
        for s in 1..p {
            self.src_start[s] = self.src_start[s - 1] + self.recv_rows[s - 1];
        }
        let mut row = 0;
        for j in 0..el {
            self.bins[j] = row;
            for (s, &first) in self.src_start.iter().enumerate() {
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
        self.send_back(&stage, ys);
        self.stage = stage;
    }

    /// dxs[R,C] (overwritten) from dys[R,C], both in this rank's global expert order; the
    /// gradients of the rank's experts accumulate into `gw`.
    pub fn backward(&mut self, dxs: &mut [T], gw: ExpertGrads<T>, dys: &[T], w: ExpertWeights<T>) {
        let (c, f) = (self.c, self.f);
        let mut stage = std::mem::take(&mut self.stage);
        self.send_out(dys, &mut stage);
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
        self.send_back(&stage, dxs);
        self.stage = stage;
    }
}
