//! The MoE block at inference: route each token (the router variants of `config::Router`),
//! run each expert once on all its tokens, add the weighted outputs, plus the shared expert.

use crate::config::{Act, MoeSpec, Router};
use crate::linear::Linear;
use moe_engine::moe::select::topk;
use rayon::prelude::*;

/// Gate and up projections of an expert: two matrices, or one fused [2I, in] output whose
/// halves (or, interleaved, even/odd columns: gpt-oss) are gate and up.
pub enum GateUp {
    Split(Linear, Linear),
    Fused { lin: Linear, interleaved: bool },
}

pub struct Expert {
    pub gate_up: GateUp,
    pub down: Linear,
}

impl Expert {
    /// Its weight matrices.
    pub fn weights(&self) -> Vec<&crate::weight::Weight> {
        let mut v = match &self.gate_up {
            GateUp::Split(g, u) => vec![&g.w, &u.w],
            GateUp::Fused { lin, .. } => vec![&lin.w],
        };
        v.push(&self.down.w);
        v
    }

    /// y[n, H] = down(act(gate(x), up(x))) for x[n, in].
    pub fn forward(&self, x: &[f32], n: usize, act: Act, y: &mut [f32]) {
        let inter = self.down.inp;
        let (mut g, mut u) = (vec![0.0; n * inter], vec![0.0; n * inter]);
        match &self.gate_up {
            GateUp::Split(gate, up) => {
                gate.forward(x, n, &mut g);
                up.forward(x, n, &mut u);
            }
            GateUp::Fused { lin, interleaved } => {
                let mut gu = vec![0.0; n * 2 * inter];
                lin.forward(x, n, &mut gu);
                for ((row, gr), ur) in
                    gu.chunks_exact(2 * inter).zip(g.chunks_exact_mut(inter)).zip(u.chunks_exact_mut(inter))
                {
                    for j in 0..inter {
                        (gr[j], ur[j]) =
                            if *interleaved { (row[2 * j], row[2 * j + 1]) } else { (row[j], row[inter + j]) };
                    }
                }
            }
        }
        let h = match act {
            Act::Swiglu => {
                let mut h = vec![0.0; n * inter];
                moe_kernels::swiglu::swiglu_forward(&mut h, &g, &u);
                h
            }
            Act::ClampedSwiglu { alpha, limit } => {
                let mut h = vec![0.0; n * inter];
                moe_kernels::swiglu::clamped_swiglu_forward(&mut h, &g, &u, alpha, limit);
                h
            }
        };
        self.down.forward(&h, n, y);
    }
}

/// Routes one token: `logits[E]` (router bias already added), `score_bias` the selection-only
/// bias (DeepSeek-V3, and moe's own softmax models). Writes the chosen experts and their weights.
pub fn route(spec: &MoeSpec, logits: &[f32], score_bias: Option<&[f32]>, ids: &mut [u32], w: &mut [f32]) {
    let e = logits.len();
    match spec.router {
        Router::SoftmaxTopk { renorm } => {
            let p = softmax(logits);
            match score_bias {
                // selection by score + bias, weights from the scores (moe's aux-loss-free balancing)
                Some(b) => topk(ids, &p.iter().zip(b).map(|(s, b)| s + b).collect::<Vec<f32>>(), |_| true),
                None => topk(ids, &p, |_| true),
            }
            fill(w, ids, &p);
            if renorm {
                normalize(w, 0.0);
            }
        }
        Router::TopkSoftmax => {
            topk(ids, logits, |_| true);
            fill(w, ids, logits);
            let s = softmax(w);
            w.copy_from_slice(&s);
        }
        Router::SigmoidGroup { n_group, topk_group, renorm, scale } => {
            let s: Vec<f32> = logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect();
            let mut keys: Vec<f32> = s.iter().zip(0..).map(|(v, i)| v + score_bias.map_or(0.0, |b| b[i])).collect();
            if n_group > 1 {
                let per = e / n_group;
                let group_score: Vec<f32> = keys
                    .chunks(per)
                    .map(|c| {
                        let mut best = [0u32; 2];
                        let take = per.min(2);
                        topk(&mut best[..take], c, |_| true);
                        best[..take].iter().map(|&i| c[i as usize]).sum()
                    })
                    .collect();
                let mut groups = vec![0u32; topk_group];
                topk(&mut groups, &group_score, |_| true);
                // transformers zeroes (not -inf) the keys of the other groups
                for (i, k) in keys.iter_mut().enumerate() {
                    if !groups.contains(&((i / per) as u32)) {
                        *k = 0.0;
                    }
                }
            }
            topk(ids, &keys, |_| true);
            fill(w, ids, &s);
            if renorm {
                normalize(w, 1e-20);
            }
            w.iter_mut().for_each(|v| *v *= scale);
        }
        Router::SparseMixer { eps } => {
            let mut masked = logits.to_vec();
            for slot in 0..2 {
                let (best, thr) =
                    masked
                        .iter()
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
                let gates: Vec<f32> = masked
                    .iter()
                    .zip(logits)
                    .map(|(&m, &s)| if (thr - s) / s.abs().max(thr) > 2.0 * eps { f32::NEG_INFINITY } else { m })
                    .collect();
                ids[slot] = best as u32;
                w[slot] = softmax(&gates)[best];
                masked[best] = f32::NEG_INFINITY;
            }
        }
    }
}

fn fill(w: &mut [f32], ids: &[u32], src: &[f32]) {
    for (wv, &i) in w.iter_mut().zip(ids) {
        *wv = src[i as usize];
    }
}

fn normalize(w: &mut [f32], eps: f32) {
    let s: f32 = w.iter().sum::<f32>() + eps;
    w.iter_mut().for_each(|v| *v /= s);
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    moe_kernels::softmax::softmax_row(&mut y, x);
    y
}

/// Chosen experts and weights of every token, [n, k] each.
pub struct Routing {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
}

/// y[n, H] += sum over each token's experts of weight * expert(x). Experts run in parallel,
/// each on all of its tokens at once; experts this rank does not hold (None) are skipped, and with
/// `only` so are the experts it does not name (a group run under a memory budget).
pub fn experts_forward(
    spec: &MoeSpec,
    experts: &[Option<Expert>],
    x: &[f32],
    n: usize,
    r: &Routing,
    only: Option<&[usize]>,
    y: &mut [f32],
) {
    let (k, c) = (spec.top_k, x.len() / n.max(1));
    let mut rows: Vec<Vec<(usize, f32)>> = vec![vec![]; experts.len()];
    for t in 0..n {
        for s in 0..k {
            let e = r.ids[t * k + s] as usize;
            if only.is_none_or(|g| g.contains(&e)) {
                rows[e].push((t, r.weights[t * k + s]));
            }
        }
    }
    let outs: Vec<Vec<f32>> = experts
        .par_iter()
        .zip(&rows)
        .map(|(ex, rs)| {
            let Some(ex) = ex.as_ref().filter(|_| !rs.is_empty()) else { return vec![] };
            let xs: Vec<f32> = rs.iter().flat_map(|&(t, _)| x[t * c..(t + 1) * c].iter().copied()).collect();
            let mut out = vec![0.0; rs.len() * c];
            ex.forward(&xs, rs.len(), spec.act, &mut out);
            out
        })
        .collect();
    for (rs, out) in rows.iter().zip(&outs) {
        for (&(t, w), o) in rs.iter().zip(out.chunks_exact(c)) {
            y[t * c..(t + 1) * c].iter_mut().zip(o).for_each(|(a, b)| *a += w * b);
        }
    }
}

/// Tokens routed to each expert of each MoE layer, counted across forwards (a server reports
/// the expert load of the traffic it served). Counts [MoE layer][expert].
pub struct ExpertLoad(std::sync::Mutex<Vec<Vec<u64>>>);

impl ExpertLoad {
    pub fn new(moe_layers: usize, experts: usize) -> Self {
        ExpertLoad(std::sync::Mutex::new(vec![vec![0; experts]; moe_layers]))
    }

    /// Counts the routing `ids` [T*K] of MoE layer `layer`.
    pub fn add(&self, layer: usize, ids: &[u32]) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(row) = c.get_mut(layer) {
            for &e in ids {
                if let Some(n) = row.get_mut(e as usize) {
                    *n += 1;
                }
            }
        }
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> Vec<Vec<u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
