//! The MoE feed-forward layer as a pipeline of explicit stages, each with a forward and a
//! backward and no hidden state:
//! router -> dispatch (counting sort) -> experts (grouped SwiGLU) -> combine, plus the
//! auxiliary losses and statistics (`losses`). The layer returns its statistics as values;
//! the model turns them into loss terms and hands their gradients back to `moe_backward`.
//! Dropless: every token reaches its K experts.

pub mod combine;
pub mod dispatch;
pub mod experts;
pub mod losses;
pub mod router;

use combine::{combine_backward, combine_forward};
use dispatch::{dispatch_backward, dispatch_forward, Routing};
use experts::{experts_backward, experts_forward, ExpertGrads, ExpertWeights};
pub use losses::MoeStats;
use moe_kernels::Float;
use router::{router_backward, router_forward, RouterActs};

/// Sizes of one MoE layer call: N tokens of width C, E experts of width F, top-K.
#[derive(Clone, Copy, Debug)]
pub struct MoeDims {
    pub n: usize,
    pub c: usize,
    pub e: usize,
    pub k: usize,
    pub f: usize,
    pub norm_topk_prob: bool,
}

/// Weights: router[E,C] and the stacked experts.
#[derive(Clone, Copy)]
pub struct MoeWeights<'a, T> {
    pub router: &'a [T],
    pub experts: ExpertWeights<'a, T>,
}

/// Gradients, same shapes as [`MoeWeights`].
pub struct MoeGrads<'a, T> {
    pub router: &'a mut [T],
    pub experts: ExpertGrads<'a, T>,
}

/// Everything the forward saves plus the backward's scratch, allocated once for N tokens.
pub struct MoeActs<T> {
    pub router: RouterActs<T>,
    pub routing: Routing,
    /// [R,C] token rows in expert order.
    pub xs: Vec<T>,
    /// [R,F] expert pre-activations and activation.
    pub g: Vec<T>,
    pub u: Vec<T>,
    pub h: Vec<T>,
    /// [R,C] expert outputs in expert order.
    pub ys: Vec<T>,
    pub stats: MoeStats,
    // Backward scratch.
    dys: Vec<T>,
    dxs: Vec<T>,
    dtopk_w: Vec<T>,
    dprobs: Vec<T>,
    dlogits: Vec<T>,
    dh: Vec<T>,
    dg: Vec<T>,
    du: Vec<T>,
}

impl<T: Float> MoeActs<T> {
    /// Buffers for up to `n` tokens.
    pub fn new(n: usize, c: usize, e: usize, k: usize, f: usize) -> Self {
        let r = n * k;
        let z = |len| vec![T::ZERO; len];
        MoeActs {
            router: RouterActs::new(n, e, k),
            routing: Routing::new(e, r),
            xs: z(r * c),
            g: z(r * f),
            u: z(r * f),
            h: z(r * f),
            ys: z(r * c),
            stats: MoeStats::default(),
            dys: z(r * c),
            dxs: z(r * c),
            dtopk_w: z(r),
            dprobs: z(n * e),
            dlogits: z(n * e),
            dh: z(r * f),
            dg: z(r * f),
            du: z(r * f),
        }
    }
}

/// out[N,C] = MoE(x[N,C]); statistics land in `acts.stats`.
pub fn moe_forward<T: Float>(out: &mut [T], x: &[T], w: MoeWeights<T>, a: &mut MoeActs<T>, d: MoeDims) {
    let (n, c, e, k, f) = (d.n, d.c, d.e, d.k, d.f);
    let r = n * k;
    router_forward(&mut a.router, x, w.router, n, c, e, k, d.norm_topk_prob);
    let ids = &a.router.topk_ids[..r];
    a.routing.indices.truncate(r);
    a.routing.positions.truncate(r);
    a.routing.indices.resize(r, 0);
    a.routing.positions.resize(r, 0);
    dispatch_forward(&mut a.routing, &mut a.xs, &x[..n * c], ids, k, c);
    experts_forward(&mut a.ys, &mut a.g, &mut a.u, &mut a.h, &a.xs, w.experts, &a.routing, c, f);
    combine_forward(&mut out[..n * c], &a.ys, &a.router.topk_w[..r], &a.routing, k, c);
    losses::routing_stats(&mut a.stats, &a.router.probs, &a.router.lse, &a.routing.tokens_per_expert, n, e);
}

/// dx[N,C] += dL/dx; gradients accumulate. `dmean_probs`[E] is dLoss/dP_e of the balancing
/// loss (coefficient included); `z_scale` is dLoss/d(this layer's z-loss).
#[allow(clippy::too_many_arguments)]
pub fn moe_backward<T: Float>(
    dx: &mut [T],
    gw: MoeGrads<T>,
    dout: &[T],
    x: &[T],
    w: MoeWeights<T>,
    a: &mut MoeActs<T>,
    d: MoeDims,
    dmean_probs: &[f64],
    z_scale: f64,
) {
    let (n, c, e, k, f) = (d.n, d.c, d.e, d.k, d.f);
    let r = n * k;
    combine_backward(&mut a.dys, &mut a.dtopk_w, &dout[..n * c], &a.ys, &a.router.topk_w[..r], &a.routing, k, c);
    let scratch = [&mut a.dh[..], &mut a.dg[..], &mut a.du[..]];
    experts_backward(&mut a.dxs, gw.experts, &a.dys, &a.xs, w.experts, &a.g, &a.u, &a.h, scratch, &a.routing, c, f);
    dispatch_backward(&mut dx[..n * c], &a.dxs, &a.routing, k, c);
    // Balancing loss on the mean probabilities: dP_e / dp_{n,e} = 1/N.
    for row in a.dprobs[..n * e].chunks_mut(e) {
        for (dp, &g) in row.iter_mut().zip(dmean_probs) {
            *dp = T::from_f64(g / n as f64);
        }
    }
    router_backward(
        &mut dx[..n * c],
        gw.router,
        &mut a.dprobs,
        &mut a.dlogits,
        &a.dtopk_w[..r],
        &a.router,
        &x[..n * c],
        w.router,
        n,
        c,
        e,
        k,
        d.norm_topk_prob,
        z_scale,
    );
}
