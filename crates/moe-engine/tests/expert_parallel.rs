//! Expert parallelism: an MoE layer whose experts are spread over P in-process ranks, each rank
//! routing its own slice of the tokens, equals the layer on one rank over all tokens (outputs,
//! input gradients and every parameter gradient), for contiguous placements and for balanced
//! ones that move experts and replicate hot ones; the bytes exchanged match the formula; the
//! in-process communicator fails with an error instead of hanging when a rank is missing.

use moe_engine::config::ModelConfig;
use moe_engine::dist::placement::balance;
use moe_engine::dist::{thread_ranks, Comm, ExpertParallel, Placement};
use moe_engine::ffn::{MlpGrads, MlpWeights};
use moe_engine::linear::{Lin, LinGrad};
use moe_engine::moe::router::{RouterGrads, RouterWeights};
use moe_engine::moe::shared::{SharedGrads, SharedWeights};
use moe_engine::moe::{moe_backward, moe_forward, MoeActs, MoeGrads, MoeSpec, MoeWeights};
use moe_engine::rng::Rng;
use std::sync::Arc;
use std::time::Duration;

fn randn(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * 0.7).collect()
}

fn cfg() -> ModelConfig {
    ModelConfig {
        hidden_size: 6,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        num_local_experts: 8,
        num_experts_per_tok: 2,
        moe_intermediate_size: 3,
        shared_expert_intermediate_size: 4,
        shared_expert_gate: true,
        ..ModelConfig::tiny()
    }
}

/// Weights [router, gate, up, down, shared gate, up, down, shared-expert gate] for E experts.
struct Layer(Vec<Vec<f64>>);

impl Layer {
    fn random(cfg: &ModelConfig, seed: u64) -> Layer {
        let (c, e, f, fs) =
            (cfg.hidden_size, cfg.num_local_experts, cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size);
        let mut rng = Rng::new(seed);
        Layer(
            [e * c, e * f * c, e * f * c, e * c * f, fs * c, fs * c, c * fs, c]
                .iter()
                .map(|&n| randn(&mut rng, n))
                .collect(),
        )
    }
    /// The same layer with only the experts of `slots`, in slot order.
    fn slots(&self, cfg: &ModelConfig, slots: &[usize]) -> Layer {
        let fc = cfg.moe_intermediate_size * cfg.hidden_size;
        let mut v = self.0.clone();
        for w in &mut v[1..4] {
            *w = slots.iter().flat_map(|&x| w[x * fc..(x + 1) * fc].to_vec()).collect();
        }
        Layer(v)
    }
    fn weights(&self) -> MoeWeights<'_, f64> {
        let v = &self.0;
        MoeWeights {
            router: RouterWeights { weight: Lin::from(&v[0][..]), bias: None, selection_bias: None },
            experts: MlpWeights::plain(&v[1], &v[2], &v[3]),
            shared: Some(SharedWeights { mlp: MlpWeights::plain(&v[4], &v[5], &v[6]), gate: Some(&v[7]) }),
        }
    }
    fn zeros(&self) -> Layer {
        Layer(self.0.iter().map(|v| vec![0.0; v.len()]).collect())
    }
}

/// (output, input gradient, parameter gradients, bytes sent) of one rank.
type RankResult = (Vec<f64>, Vec<f64>, Layer, u64);

/// Forward and backward of `w` on x[N,C] with output gradient r[N,C].
fn run(spec: MoeSpec, w: &Layer, x: &[f64], r: &[f64], z: f64, ep: Option<(Arc<dyn Comm>, &Placement)>) -> RankResult {
    let mut a = MoeActs::new(spec);
    if let Some((cm, placement)) = ep {
        a.ep = Some(ExpertParallel::new(cm, placement, spec.c, spec.f));
    }
    let mut out = vec![0.0; spec.n * spec.c];
    moe_forward(&mut out, x, w.weights(), &mut a, spec, None);
    let mut g = w.zeros();
    let mut dx = vec![0.0; spec.n * spec.c];
    let dp = vec![0.0; spec.n.div_ceil(spec.t) * spec.e];
    {
        let [router, gate, up, down, sg, su, sd, sgg] = &mut g.0[..] else { unreachable!() };
        let grads = MoeGrads {
            router: RouterGrads { weight: LinGrad::from(&mut router[..]), bias: None },
            experts: MlpGrads::plain(gate, up, down),
            shared: Some(SharedGrads { mlp: MlpGrads::plain(sg, su, sd), gate: Some(sgg) }),
        };
        moe_backward(&mut dx, grads, r, x, w.weights(), &mut a, spec, &dp, z);
    }
    let sent = a.ep.as_ref().map_or(0, |ep| ep.bytes_sent);
    (out, dx, g, sent)
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn ranks_equal_one_rank(placement: &Placement) {
    let (cfg, p) = (cfg(), placement.ranks.len());
    let (n, t, c) = (6, 3, cfg.hidden_size);
    let total = p * n;
    let mut rng = Rng::new(11);
    let (x, r) = (randn(&mut rng, total * c), randn(&mut rng, total * c));
    let w = Layer::random(&cfg, 5);
    let z = 0.1;
    let (out, dx, g, _) = run(MoeSpec::new(&cfg, total, t), &w, &x, &r, z, None);
    let comms = thread_ranks(p, Duration::from_secs(30));
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, cm)| {
                let (cfg, w, x, r) = (&cfg, &w, &x, &r);
                s.spawn(move || {
                    let local = w.slots(cfg, &placement.ranks[rank]);
                    let rows = rank * n * c..(rank + 1) * n * c;
                    // The z-loss is a mean over the rank's tokens: its share of the global mean is 1/P.
                    let ep: (Arc<dyn Comm>, _) = (Arc::new(cm), placement);
                    run(MoeSpec::new(cfg, n, t), &local, &x[rows.clone()], &r[rows], z / p as f64, Some(ep))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let cat =
        |f: fn(&RankResult) -> &Vec<f64>| results.iter().flat_map(|res| f(res).iter().copied()).collect::<Vec<f64>>();
    assert!(max_diff(&cat(|r| &r.0), &out) < 1e-12, "P={p}: outputs differ");
    assert!(max_diff(&cat(|r| &r.1), &dx) < 1e-12, "P={p}: input gradients differ");
    // An expert's gradient is the sum of its replicas' gradients.
    for i in [1, 2, 3] {
        let per = g.0[i].len() / cfg.num_local_experts;
        let mut experts = vec![0.0; g.0[i].len()];
        for (res, slots) in results.iter().zip(&placement.ranks) {
            for (&x, grad) in slots.iter().zip(res.2 .0[i].chunks_exact(per)) {
                experts[x * per..(x + 1) * per].iter_mut().zip(grad).for_each(|(s, v)| *s += v);
            }
        }
        assert!(max_diff(&experts, &g.0[i]) < 1e-12, "P={p}: expert gradient {i} differs");
    }
    for i in [0, 4, 5, 6, 7] {
        let mut sum = vec![0.0; g.0[i].len()];
        for res in &results {
            sum.iter_mut().zip(&res.2 .0[i]).for_each(|(s, v)| *s += v);
        }
        assert!(max_diff(&sum, &g.0[i]) < 1e-12, "P={p}: replicated gradient {i} differs");
    }
    // Traffic: 4 all-to-alls (forward there and back, backward there and back), each moving
    // every routed row once: N*K rows of C f64 per rank, summed over ranks.
    let want = 4 * (total * cfg.num_experts_per_tok * c * 8) as u64;
    assert_eq!(results.iter().map(|r| r.3).sum::<u64>(), want, "P={p}: bytes sent");
}

#[test]
fn expert_parallel_layer_equals_single_rank() {
    for p in [1, 2, 4] {
        ranks_equal_one_rank(&Placement::contiguous(8, p).unwrap());
    }
}

#[test]
fn moved_and_replicated_experts_equal_single_rank() {
    // A skewed load: the balancer moves experts off contiguous ranks and replicates hot ones.
    let load = [40.0, 3.0, 1.0, 25.0, 2.0, 9.0, 30.0, 1.0];
    for (p, redundant) in [(2, 0), (2, 2), (4, 4), (4, 8)] {
        let placement = balance(&load, p, redundant).unwrap();
        assert_ne!(placement, Placement::contiguous(8, p).unwrap(), "P={p}: the balancer changed nothing");
        assert_eq!(placement.replicas.iter().sum::<usize>(), 8 + redundant);
        ranks_equal_one_rank(&placement);
    }
}

#[test]
fn a_missing_rank_is_an_error_not_a_hang() {
    let mut comms = thread_ranks(2, Duration::from_millis(300));
    let _absent = comms.pop();
    let mut buf = vec![0.0f32; 4];
    let e = comms[0].all_reduce_sum_f32(&mut buf).unwrap_err().to_string();
    assert!(e.contains("rank 0") && e.contains("did not reach"), "{e}");
}
