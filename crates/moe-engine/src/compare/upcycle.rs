//! Sparse upcycling (Komatsuzaki et al. 2022; Qwen1.5-MoE): the parameters of an MoE model
//! initialised from a trained dense one. Attention, norms, embeddings and LM head are copied;
//! in every MoE layer each expert is a copy of the dense MLP, or with `split` G > 1 one of G
//! fine-grained slices of it (expert e holds slice e mod G, its down projection scaled by G so
//! that G experts of equal weight 1/G sum to the dense MLP); the router starts small and random.
//! With a shared expert (Qwen2-MoE / DeepSeekMoE style) of the dense width, the shared expert is
//! the dense MLP (its gate, if any, zero and its down projection doubled: sigmoid(0) = 1/2) and
//! the routed experts start as above but with zero down projections, so the MoE computes the
//! dense function exactly at step 0 and the routed experts grow from there.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::params::{FfnSpans, Layout};
use crate::rng::Rng;

/// MoE parameters for `moe` from the dense model (`dense`, `dense_params`).
///
/// `moe` must equal `dense` except for the MoE fields, with expert width = dense width / split.
pub fn upcycle(
    dense: &ModelConfig,
    dense_params: &[f32],
    moe: &ModelConfig,
    split: usize,
    router_std: f64,
    seed: u64,
) -> Result<Vec<f32>> {
    let bad = |what: String, hint: &str| Err(Error::config(what, hint));
    if dense.num_local_experts != 0 {
        return bad("the model to upcycle is already an MoE".into(), "upcycle a dense checkpoint");
    }
    if moe.vocab_size != dense.vocab_size
        || moe.hidden_size != dense.hidden_size
        || moe.num_hidden_layers != dense.num_hidden_layers
        || moe.num_attention_heads != dense.num_attention_heads
        || moe.num_key_value_heads != dense.num_key_value_heads
        || moe.intermediate_size != dense.intermediate_size
        || moe.qkv_bias != dense.qkv_bias
    {
        return bad(
            "the MoE model's vocabulary, width, layers, heads or dense width differ from the dense checkpoint's".into(),
            "derive the MoE config from the dense one",
        );
    }
    if split == 0 || moe.moe_intermediate_size * split != dense.intermediate_size {
        return bad(
            format!(
                "expert width {} times split {split} is not the dense width {}",
                moe.moe_intermediate_size, dense.intermediate_size
            ),
            "use expert width = dense width / split",
        );
    }
    let shared = moe.shared_expert_intermediate_size > 0;
    if shared && moe.shared_expert_intermediate_size != dense.intermediate_size {
        return bad(
            format!(
                "the shared expert's width {} is not the dense width {}: the shared expert starts as the dense MLP",
                moe.shared_expert_intermediate_size, dense.intermediate_size
            ),
            "give the shared part the dense width (--moe ExK:F+S with S x F = the dense width)",
        );
    }
    let (dl, ml) = (Layout::new(dense), Layout::new(moe));
    if dense_params.len() != dl.total {
        return bad(
            format!("{} dense parameters, the config has {}", dense_params.len(), dl.total),
            "pass the checkpoint's own config",
        );
    }
    let mut p = vec![0.0f32; ml.total];
    let copy = |from: crate::params::Span, to: crate::params::Span, p: &mut [f32]| {
        to.of_mut(p).copy_from_slice(from.of(dense_params));
    };
    copy(dl.embed, ml.embed, &mut p);
    copy(dl.norm, ml.norm, &mut p);
    copy(dl.lm_head, ml.lm_head, &mut p);
    let mut rng = Rng::new(seed);
    let c = dense.hidden_size;
    let (f, fe) = (dense.intermediate_size, moe.moe_intermediate_size);
    for (d, m) in dl.layers.iter().zip(&ml.layers) {
        for (a, b) in [(d.ln1, m.ln1), (d.wq, m.wq), (d.wk, m.wk), (d.wv, m.wv), (d.wo, m.wo), (d.ln2, m.ln2)] {
            copy(a, b, &mut p);
        }
        if let (Some(a), Some(b)) = (d.qkv_bias, m.qkv_bias) {
            a.into_iter().zip(b).for_each(|(a, b)| copy(a, b, &mut p));
        }
        let FfnSpans::Dense { gate, up, down, .. } = &d.ffn else { unreachable!("a dense layout has dense layers") };
        match &m.ffn {
            FfnSpans::Dense { gate: g, up: u, down: dn, .. } => {
                copy(*gate, *g, &mut p);
                copy(*up, *u, &mut p);
                copy(*down, *dn, &mut p);
            }
            FfnSpans::Moe(sp) => {
                sp.router.of_mut(&mut p).iter_mut().for_each(|w| *w = (rng.normal() * router_std) as f32);
                let (dg, du, dd) = (gate.of(dense_params), up.of(dense_params), down.of(dense_params));
                for e in 0..moe.num_local_experts {
                    let s = e % split;
                    // gate/up (E, Fe, C): rows s*Fe.. of the dense (F, C) matrices.
                    let rows = s * fe * c..(s + 1) * fe * c;
                    sp.gate.of_mut(&mut p)[e * fe * c..(e + 1) * fe * c].copy_from_slice(&dg[rows.clone()]);
                    sp.up.of_mut(&mut p)[e * fe * c..(e + 1) * fe * c].copy_from_slice(&du[rows]);
                    // down (E, C, Fe): columns s*Fe.. of the dense (C, F) matrix, times split.
                    // (zero with a shared expert: it alone computes the dense MLP at first)
                    let dst = &mut sp.down.of_mut(&mut p)[e * c * fe..(e + 1) * c * fe];
                    let scale = if shared { 0.0 } else { split as f32 };
                    for (row, out) in dst.chunks_exact_mut(fe).enumerate() {
                        let src = &dd[row * f + s * fe..row * f + (s + 1) * fe];
                        out.iter_mut().zip(src).for_each(|(o, &x)| *o = x * scale);
                    }
                }
                if let Some([sg, su, sd]) = sp.shared {
                    copy(*gate, sg, &mut p);
                    copy(*up, su, &mut p);
                    copy(*down, sd, &mut p);
                    if let Some(g) = sp.shared_gate {
                        g.of_mut(&mut p).fill(0.0);
                        sd.of_mut(&mut p).iter_mut().for_each(|w| *w *= 2.0);
                    }
                }
            }
        }
    }
    Ok(p)
}
