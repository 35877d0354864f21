//! The MoE feed-forward layer as a pipeline of explicit stages, each with a forward and a
//! backward and no hidden state:
//! router (`router`, `select`) -> dispatch (counting sort, capacity) -> experts (grouped
//! SwiGLU) -> combine, plus the optional shared expert (`shared`) and the auxiliary losses and
//! statistics (`losses`). The layer returns its statistics as values; the model turns them
//! into loss terms and hands their gradients back to `moe_backward`.

pub mod combine;
pub mod dispatch;
pub mod experts;
pub mod losses;
pub mod router;
pub mod select;
pub mod shared;

use crate::config::{DropPolicy, ModelConfig, RouterKind};
use crate::dist::ExpertParallel;
use combine::{combine_backward, combine_forward};
use dispatch::{dispatch_backward, dispatch_forward, Routing};
use experts::{experts_backward, experts_forward, ExpertGrads, ExpertWeights};
pub use losses::MoeStats;
use moe_kernels::Float;
use router::{router_backward, router_forward, RouterActs, RouterGrads, RouterWeights};
use shared::{shared_backward, shared_forward, SharedActs, SharedGrads, SharedWeights};

/// Sizes and routing settings of one MoE layer call.
#[derive(Clone, Copy, Debug)]
pub struct MoeSpec {
    /// N tokens of width C in sequences of T; E experts of width F; top-K; shared width Fs.
    pub n: usize,
    pub t: usize,
    pub c: usize,
    pub e: usize,
    pub k: usize,
    pub f: usize,
    pub fs: usize,
    /// Routed rows the buffers hold (see `ModelConfig::routed_rows`).
    pub rows: usize,
    /// Rows an expert may take (usize::MAX = dropless).
    pub capacity: usize,
    pub router: RouterKind,
    pub norm_topk_prob: bool,
    pub n_group: usize,
    pub topk_group: usize,
    pub routed_scaling_factor: f64,
    pub jitter: f64,
    pub drop_by_weight: bool,
    /// The sparsemixer's threshold.
    pub mixer_eps: f64,
}

impl MoeSpec {
    /// The spec of `cfg`'s MoE layers for N = n tokens in sequences of t.
    pub fn new(cfg: &ModelConfig, n: usize, t: usize) -> Self {
        MoeSpec {
            n,
            t,
            c: cfg.hidden_size,
            e: cfg.num_local_experts,
            k: cfg.num_experts_per_tok,
            f: cfg.moe_intermediate_size,
            fs: cfg.shared_expert_intermediate_size,
            rows: cfg.routed_rows(n),
            capacity: cfg.expert_capacity(n),
            router: cfg.router,
            norm_topk_prob: cfg.norm_topk_prob,
            n_group: cfg.n_group,
            topk_group: cfg.topk_group,
            routed_scaling_factor: cfg.routed_scaling_factor,
            jitter: cfg.router_jitter_noise,
            drop_by_weight: cfg.drop_policy == DropPolicy::Probability,
            mixer_eps: cfg.sparse_mixer_eps,
        }
    }
}

/// Weights of the layer.
#[derive(Clone, Copy)]
pub struct MoeWeights<'a, T> {
    pub router: RouterWeights<'a, T>,
    pub experts: ExpertWeights<'a, T>,
    pub shared: Option<SharedWeights<'a, T>>,
}

/// Gradients, same shapes as [`MoeWeights`].
pub struct MoeGrads<'a, T> {
    pub router: RouterGrads<'a, T>,
    pub experts: ExpertGrads<'a, T>,
    pub shared: Option<SharedGrads<'a, T>>,
}

/// Everything the forward saves plus the backward's scratch, allocated once for N tokens.
pub struct MoeActs<T> {
    pub spec: MoeSpec,
    pub router: RouterActs<T>,
    pub routing: Routing,
    /// [rows,C] token rows in expert order.
    pub xs: Vec<T>,
    /// [rows,F] expert pre-activations and activation.
    pub g: Vec<T>,
    pub u: Vec<T>,
    pub h: Vec<T>,
    /// [rows,C] expert outputs in expert order.
    pub ys: Vec<T>,
    pub shared: Option<SharedActs<T>>,
    pub stats: MoeStats,
    /// Expert parallelism: the expert stage runs on the experts' owner ranks.
    pub ep: Option<ExpertParallel<T>>,
    dys: Vec<T>,
    dxs: Vec<T>,
    dweight: Vec<T>,
    dh: Vec<T>,
    dg: Vec<T>,
    du: Vec<T>,
}

impl<T: Float> MoeActs<T> {
    /// Buffers for up to `spec.n` tokens.
    pub fn new(spec: MoeSpec) -> Self {
        let (n, c, e, f, r) = (spec.n, spec.c, spec.e, spec.f, spec.rows);
        let z = moe_kernels::buffer::zeroed::<T>;
        MoeActs {
            spec,
            router: RouterActs::new(&spec),
            routing: Routing::new(e, n, r),
            xs: z(r * c),
            g: z(r * f),
            u: z(r * f),
            h: z(r * f),
            ys: z(r * c),
            shared: (spec.fs > 0).then(|| SharedActs::new(n, c, spec.fs)),
            stats: MoeStats::default(),
            ep: None,
            dys: z(r * c),
            dxs: z(r * c),
            dweight: z(r),
            dh: z(r * f),
            dg: z(r * f),
            du: z(r * f),
        }
    }
}

/// out[N,C] = MoE(x[N,C]) for the first `s.n` tokens (s.n <= the allocated N; s.t divides it).
/// `noise_seed` turns the router jitter on (training). Statistics land in `a.stats`.
pub fn moe_forward<T: Float>(
    out: &mut [T],
    x: &[T],
    w: MoeWeights<T>,
    a: &mut MoeActs<T>,
    s: MoeSpec,
    noise_seed: Option<u64>,
) {
    let (n, c, f) = (s.n, s.c, s.f);
    router_forward(&mut a.router, x, w.router, &s, noise_seed);
    let r = a.router.r;
    let (expert, token, weight) = (&a.router.expert[..r], &a.router.token[..r], &a.router.weight[..r]);
    let capacity = if s.router == RouterKind::ExpertChoice { usize::MAX } else { s.capacity };
    a.routing.build(expert, token, weight, n, capacity, s.drop_by_weight);
    dispatch_forward(&mut a.xs, &x[..n * c], &a.routing, token, c);
    match a.ep.as_mut() {
        Some(ep) => ep.forward(&mut a.ys, &a.xs, &a.routing.bins, w.experts),
        None => experts_forward(&mut a.ys, &mut a.g, &mut a.u, &mut a.h, &a.xs, w.experts, &a.routing.bins, c, f),
    }
    combine_forward(&mut out[..n * c], &a.ys, weight, &a.routing, c);
    if let (Some(sw), Some(sa)) = (w.shared, a.shared.as_mut()) {
        shared_forward(out, x, sw, sa, n, c, s.fs);
    }
    let rt = &a.routing;
    let softmax = s.router != RouterKind::SigmoidGroup;
    losses::routing_stats(
        &mut a.stats,
        &a.router.probs,
        softmax.then_some(&a.router.logits[..]),
        &a.router.lse,
        expert,
        token,
        &rt.tokens_per_expert,
        rt.dropped,
        n,
        s.t,
        s.e,
    );
}

/// dx[N,C] += dL/dx; gradients accumulate. `dprobs_seq`[S,E] is dLoss/d(per-sequence mean
/// affinity) of the balancing loss (coefficient included); `z_scale` is dLoss/d(z-loss).
#[allow(clippy::too_many_arguments)]
pub fn moe_backward<T: Float>(
    dx: &mut [T],
    gw: MoeGrads<T>,
    dout: &[T],
    x: &[T],
    w: MoeWeights<T>,
    a: &mut MoeActs<T>,
    s: MoeSpec,
    dprobs_seq: &[f64],
    z_scale: f64,
) {
    let (n, c, f) = (s.n, s.c, s.f);
    let r = a.router.r;
    let token = &a.router.token[..r];
    combine_backward(&mut a.dys, &mut a.dweight, &dout[..n * c], &a.ys, &a.router.weight[..r], token, &a.routing, c);
    match a.ep.as_mut() {
        Some(ep) => ep.backward(&mut a.dxs, gw.experts, &a.dys, w.experts),
        None => {
            let scratch = [&mut a.dh[..], &mut a.dg[..], &mut a.du[..]];
            let b = &a.routing.bins;
            experts_backward(&mut a.dxs, gw.experts, &a.dys, &a.xs, w.experts, &a.g, &a.u, &a.h, scratch, b, c, f);
        }
    }
    dispatch_backward(&mut dx[..n * c], &a.dxs, &a.routing, c);
    if let (Some(sw), Some(sg), Some(sa)) = (w.shared, gw.shared, a.shared.as_mut()) {
        shared_backward(dx, sg, dout, x, sw, sa, n, c, s.fs);
    }
    let dweight = &a.dweight[..r];
    router_backward(dx, gw.router, dweight, dprobs_seq, z_scale, &mut a.router, x, w.router, &s);
}
