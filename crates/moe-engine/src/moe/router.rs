//! Router stage: x (optionally jittered) -> logits[N,E] (linear, optional bias) -> scores
//! (softmax, or sigmoid for `sigmoid_group`) -> assignments (token, expert, weight) by the
//! configured `RouterKind` (see `select` for how experts are picked). Also keeps the normalised
//! affinities `probs` that the balancing loss averages, and logsumexp for the z-loss.
//! The backward runs the weight gradients and the balancing-loss gradient back to the input,
//! the router weight and its bias. Router math runs in the model's float type (f32 or f64).

use super::select::{expert_choice, topk_grouped};
use super::MoeSpec;
use crate::config::RouterKind;
use crate::linear::{Lin, LinGrad};
use crate::rng::Rng;
use moe_kernels::matmul::{add_bias, bias_backward};
use moe_kernels::softmax::{logsumexp, softmax_backward, softmax_row_lse};
use moe_kernels::Float;
use rayon::prelude::*;

/// Router weights: weight[E,C] (with its LoRA adapter if it has one), optional trainable
/// bias[E], optional selection-only bias[E].
#[derive(Clone, Copy)]
pub struct RouterWeights<'a, T> {
    pub weight: Lin<'a, T>,
    pub bias: Option<&'a [T]>,
    pub selection_bias: Option<&'a [T]>,
}

/// Router gradients (the selection bias has none).
pub struct RouterGrads<'a, T> {
    pub weight: LinGrad<'a, T>,
    pub bias: Option<&'a mut [T]>,
}

/// Router outputs kept for the backward and the statistics, plus scratch.
pub struct RouterActs<T> {
    /// [N,E] logits (bias included).
    pub logits: Vec<T>,
    /// [N,E] softmax of the logits, or their sigmoid for `sigmoid_group`.
    pub scores: Vec<T>,
    /// [N,E] affinities averaged by the balancing loss: the softmax, or sigmoid / its row sum.
    pub probs: Vec<T>,
    /// [N] logsumexp of each logit row (z-loss).
    pub lse: Vec<T>,
    /// [N,C] jitter factors and the jittered input (empty when jitter is off).
    noise: Vec<T>,
    xr: Vec<T>,
    /// Whether the last forward jittered its input.
    jittered: bool,
    /// Assignments actually made (R of them): expert[R], token[R], weight[R].
    pub r: usize,
    pub expert: Vec<u32>,
    pub token: Vec<u32>,
    pub weight: Vec<T>,
    keys: Vec<T>,
    groups: Vec<T>,
    group_ids: Vec<u32>,
    ec_scratch: Vec<u32>,
    dscores: Vec<T>,
    dlogits: Vec<T>,
    dxr: Vec<T>,
}

impl<T: Float> RouterActs<T> {
    pub fn new(s: &MoeSpec) -> Self {
        let (n, c, e, r) = (s.n, s.c, s.e, s.rows);
        let z = |len| vec![T::ZERO; len];
        let jit = if s.jitter > 0.0 { n * c } else { 0 };
        let ec = if s.router == RouterKind::ExpertChoice { e * n } else { 0 };
        RouterActs {
            logits: z(n * e),
            scores: z(n * e),
            probs: z(n * e),
            lse: z(n),
            noise: z(jit),
            xr: z(jit),
            jittered: false,
            r: 0,
            expert: vec![0; r],
            token: vec![0; r],
            weight: z(r),
            keys: z(n * e),
            groups: z(n * s.n_group),
            group_ids: vec![0; n * s.topk_group],
            ec_scratch: vec![0; ec],
            dscores: z(n * e),
            dlogits: z(n * e),
            dxr: z(jit),
        }
    }
}

/// Routes x[N,C]. `noise_seed` enables the input jitter (training); None means inference.
pub fn router_forward<T: Float>(
    a: &mut RouterActs<T>,
    x: &[T],
    w: RouterWeights<T>,
    s: &MoeSpec,
    noise_seed: Option<u64>,
) {
    let (n, c, e, k) = (s.n, s.c, s.e, s.k);
    let jitter = s.jitter > 0.0 && noise_seed.is_some();
    a.jittered = jitter;
    let input: &[T] = if jitter {
        let mut rng = Rng::new(noise_seed.unwrap_or(0));
        let j = s.jitter;
        for ((nv, xv), &xi) in a.noise[..n * c].iter_mut().zip(a.xr.iter_mut()).zip(&x[..n * c]) {
            *nv = T::from_f64(1.0 - j + 2.0 * j * rng.uniform());
            *xv = xi * *nv;
        }
        &a.xr[..n * c]
    } else {
        &x[..n * c]
    };
    w.weight.forward(&mut a.logits[..n * e], input, n, c, e, true);
    if let Some(b) = w.bias {
        add_bias(&mut a.logits[..n * e], b);
    }
    let sigmoid = s.router == RouterKind::SigmoidGroup;
    a.scores[..n * e]
        .par_chunks_mut(e)
        .zip(a.probs.par_chunks_mut(e))
        .zip(a.logits.par_chunks(e).zip(a.lse.par_iter_mut()))
        .for_each(|((sc, p), (lg, lse))| {
            if sigmoid {
                *lse = logsumexp(lg);
                sc.iter_mut().zip(lg).for_each(|(sv, &l)| *sv = T::ONE / (T::ONE + (-l).exp()));
                let sum: T = sc.iter().copied().sum();
                p.iter_mut().zip(sc.iter()).for_each(|(pv, &sv)| *pv = sv / sum);
            } else {
                *lse = softmax_row_lse(sc, lg);
                p.copy_from_slice(sc);
            }
        });
    if s.router == RouterKind::ExpertChoice {
        select_expert_choice(a, s);
    } else {
        a.r = n * k;
        select_token_choice(a, w.selection_bias, s);
    }
}

fn select_token_choice<T: Float>(a: &mut RouterActs<T>, sel_bias: Option<&[T]>, s: &MoeSpec) {
    let (n, e, k) = (s.n, s.e, s.k);
    let (ng, tg) = (s.n_group, s.topk_group);
    let kind = s.router;
    let rsf = T::from_f64(s.routed_scaling_factor);
    let keys_from_logits = matches!(kind, RouterKind::TopkSoftmax | RouterKind::SparseMixer);
    let eps = T::from_f64(s.mixer_eps);
    a.keys[..n * e]
        .par_chunks_mut(e)
        .zip(a.groups.par_chunks_mut(ng).zip(a.group_ids.par_chunks_mut(tg)))
        .zip(a.expert.par_chunks_mut(k).zip(a.weight.par_chunks_mut(k)))
        .zip(a.token.par_chunks_mut(k).enumerate())
        .zip(a.scores.par_chunks(e).zip(a.logits.par_chunks(e)))
        .for_each(|((((keys, (groups, gids)), (ids, wts)), (n_idx, toks)), (sc, lg))| {
            keys.copy_from_slice(if keys_from_logits { lg } else { sc });
            if let Some(b) = sel_bias {
                keys.iter_mut().zip(b).for_each(|(kv, &bv)| *kv += bv);
            }
            topk_grouped(ids, keys, ng, groups, gids);
            toks.fill(n_idx as u32);
            match kind {
                RouterKind::SparseMixer => {
                    let (first, second) = mixer_picks(lg);
                    ids.copy_from_slice(&[first as u32, second as u32]);
                    for (wv, (pick, skip)) in wts.iter_mut().zip([(first, None), (second, Some(first))]) {
                        *wv = mixer_softmax(lg, pick, skip, eps, |_, _| {});
                    }
                }
                RouterKind::TopkSoftmax => {
                    // softmax over the selected logits
                    let m = ids.iter().map(|&i| lg[i as usize]).fold(lg[ids[0] as usize], |x, y| x.max(y));
                    let mut sum = T::ZERO;
                    for (wv, &i) in wts.iter_mut().zip(ids.iter()) {
                        *wv = (lg[i as usize] - m).exp();
                        sum += *wv;
                    }
                    wts.iter_mut().for_each(|v| *v = *v / sum);
                }
                _ => {
                    let mut sum = T::ZERO;
                    for (wv, &i) in wts.iter_mut().zip(ids.iter()) {
                        *wv = sc[i as usize];
                        sum += *wv;
                    }
                    let norm = s.norm_topk_prob && kind != RouterKind::Switch;
                    let scale = if norm { T::ONE / sum } else { T::ONE }
                        * if kind == RouterKind::SigmoidGroup { rsf } else { T::ONE };
                    wts.iter_mut().for_each(|v| *v *= scale);
                }
            }
        });
}

/// The sparsemixer's two experts: the largest logit, then the largest of the others.
fn mixer_picks<T: Float>(lg: &[T]) -> (usize, usize) {
    let best = |skip: Option<usize>| {
        (0..lg.len()).filter(|&j| Some(j) != skip).fold(None, |b: Option<usize>, j| match b {
            Some(i) if lg[i] >= lg[j] => Some(i),
            _ => Some(j),
        })
    };
    let first = best(None).unwrap_or(0);
    (first, best(Some(first)).unwrap_or(first))
}

/// The sparsemixer's weight of expert `pick`: its softmax over the logits j (other than `skip`)
/// with (m - lg_j) / max(|lg_j|, m) <= 2 eps, m = lg[pick]. `each(j, p_j)` sees every such j with
/// its probability (the backward's softmax Jacobian).
fn mixer_softmax<T: Float>(lg: &[T], pick: usize, skip: Option<usize>, eps: T, mut each: impl FnMut(usize, T)) -> T {
    let m = lg[pick];
    let two = T::from_f64(2.0);
    let kept = |j: usize| Some(j) != skip && (m - lg[j]) / lg[j].abs().max(m) <= two * eps;
    let z: T = (0..lg.len()).filter(|&j| kept(j)).map(|j| (lg[j] - m).exp()).sum();
    for j in (0..lg.len()).filter(|&j| kept(j)) {
        each(j, (lg[j] - m).exp() / z);
    }
    T::ONE / z
}

fn select_expert_choice<T: Float>(a: &mut RouterActs<T>, s: &MoeSpec) {
    let (n, e) = (s.n, s.e);
    let cap = s.capacity.min(n);
    a.r = e * cap;
    let probs = &a.probs;
    a.expert[..e * cap]
        .par_chunks_mut(cap.max(1))
        .zip(a.token.par_chunks_mut(cap.max(1)))
        .zip(a.weight.par_chunks_mut(cap.max(1)))
        .zip(a.ec_scratch.par_chunks_mut(n))
        .enumerate()
        .for_each(|(ex, (((exp, tok), wts), scratch))| {
            expert_choice(tok, n, |t| probs[t * e + ex], scratch);
            exp.fill(ex as u32);
            for (wv, &t) in wts.iter_mut().zip(tok.iter()) {
                *wv = probs[t as usize * e + ex];
            }
        });
}

/// Backward of the router. dweight[R]: gradient of each assignment's weight (zero if dropped);
/// dprobs_seq[S,E]: gradient of the per-sequence mean of `probs` (balancing loss); z_scale:
/// dLoss/d(z-loss). Accumulates into dx[N,C] and the router gradients.
#[allow(clippy::too_many_arguments)]
pub fn router_backward<T: Float>(
    dx: &mut [T],
    g: RouterGrads<T>,
    dweight: &[T],
    dprobs_seq: &[f64],
    z_scale: f64,
    a: &mut RouterActs<T>,
    x: &[T],
    w: RouterWeights<T>,
    s: &MoeSpec,
) {
    let (n, c, e, k) = (s.n, s.c, s.e, s.k);
    let kind = s.router;
    // Balancing loss: dP[s,e] spreads evenly over the sequence's tokens.
    let inv_t = 1.0 / s.t as f64;
    a.dscores[..n * e].par_chunks_mut(e).enumerate().for_each(|(tok, row)| {
        let dp = &dprobs_seq[(tok / s.t) * e..(tok / s.t + 1) * e];
        row.iter_mut().zip(dp).for_each(|(d, &g)| *d = T::from_f64(g * inv_t));
    });
    if kind == RouterKind::SigmoidGroup {
        // probs = sigmoid / rowsum  =>  ds_j = (dp_j - sum_i dp_i p_i) / rowsum
        a.dscores[..n * e].par_chunks_mut(e).zip(a.probs.par_chunks(e).zip(a.scores.par_chunks(e))).for_each(
            |(d, (p, sc))| {
                let dot: T = d.iter().zip(p).map(|(&x, &y)| x * y).sum();
                let sum: T = sc.iter().copied().sum();
                d.iter_mut().for_each(|v| *v = (*v - dot) / sum);
            },
        );
    }
    a.dlogits[..n * e].fill(T::ZERO);
    // Routing weights -> scores (or logits for topk_softmax and the sparsemixer).
    let rsf = T::from_f64(s.routed_scaling_factor);
    let eps = T::from_f64(s.mixer_eps);
    match kind {
        RouterKind::ExpertChoice => {
            for ((&t, &x), &d) in a.token[..a.r].iter().zip(&a.expert[..a.r]).zip(dweight) {
                a.dscores[t as usize * e + x as usize] += d;
            }
        }
        _ => {
            let norm = s.norm_topk_prob && kind != RouterKind::Switch;
            a.dscores[..n * e]
                .par_chunks_mut(e)
                .zip(a.dlogits.par_chunks_mut(e))
                .zip(a.expert.par_chunks(k).zip(a.weight.par_chunks(k)))
                .zip(dweight.par_chunks(k).zip(a.scores.par_chunks(e).zip(a.logits.par_chunks(e))))
                .for_each(|(((ds, dl), (ids, wts)), (dw, (sc, lg)))| match kind {
                    RouterKind::SparseMixer => {
                        // w = p_pick of a softmax over a kept set: dl_j += dw w (delta_j,pick - p_j)
                        let (first, second) = (ids[0] as usize, ids[1] as usize);
                        for (slot, (pick, skip)) in [(first, None), (second, Some(first))].into_iter().enumerate() {
                            let (wv, d) = (wts[slot], dw[slot]);
                            mixer_softmax(lg, pick, skip, eps, |j, p| dl[j] -= d * wv * p);
                            dl[pick] += d * wv;
                        }
                    }
                    RouterKind::TopkSoftmax => {
                        let dot: T = dw.iter().zip(wts).map(|(&x, &y)| x * y).sum();
                        for ((&i, &wv), &d) in ids.iter().zip(wts).zip(dw) {
                            dl[i as usize] += wv * (d - dot);
                        }
                    }
                    _ => {
                        let scale = if kind == RouterKind::SigmoidGroup { rsf } else { T::ONE };
                        if norm {
                            // w_j = scale * s_j / S  =>  ds_j = scale / S * (dw_j - sum_i dw_i s_i / S)
                            let sum: T = ids.iter().map(|&i| sc[i as usize]).sum();
                            let dot: T = ids.iter().zip(dw).map(|(&i, &d)| d * sc[i as usize]).sum::<T>() / sum;
                            for (&i, &d) in ids.iter().zip(dw) {
                                ds[i as usize] += scale * (d - dot) / sum;
                            }
                        } else {
                            for (&i, &d) in ids.iter().zip(dw) {
                                ds[i as usize] += scale * d;
                            }
                        }
                    }
                });
        }
    }
    // Scores -> logits.
    if kind == RouterKind::SigmoidGroup {
        a.dlogits[..n * e]
            .par_iter_mut()
            .zip(a.dscores.par_iter().zip(a.scores.par_iter()))
            .for_each(|(dl, (&d, &sv))| *dl += d * sv * (T::ONE - sv));
    } else {
        softmax_backward(&mut a.dlogits[..n * e], &a.dscores[..n * e], &a.scores[..n * e], e);
    }
    // z-loss = mean_n lse_n^2  =>  dlogits += z_scale * 2 lse_n softmax_n / N
    let zs = T::from_f64(2.0 * z_scale / n as f64);
    if z_scale != 0.0 {
        a.dlogits[..n * e].par_chunks_mut(e).zip(a.logits.par_chunks(e)).zip(a.lse.par_iter()).for_each(
            |((d, lg), &l)| {
                for (dv, &lv) in d.iter_mut().zip(lg) {
                    *dv += zs * l * (lv - l).exp();
                }
            },
        );
    }
    if let Some(db) = g.bias {
        bias_backward(db, &a.dlogits[..n * e]);
    }
    if a.jittered {
        w.weight.backward(&mut a.dxr[..n * c], g.weight, &a.dlogits[..n * e], &a.xr[..n * c], n, c, e, false, true);
        dx[..n * c]
            .par_iter_mut()
            .zip(a.dxr.par_iter().zip(a.noise.par_iter()))
            .for_each(|(d, (&g, &nv))| *d += g * nv);
    } else {
        w.weight.backward(&mut dx[..n * c], g.weight, &a.dlogits[..n * e], &x[..n * c], n, c, e, true, true);
    }
}
