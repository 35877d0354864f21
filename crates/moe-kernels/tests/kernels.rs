//! Every kernel: finite-difference checks of the backward in f64 on tiny shapes, and every fast
//! kernel against its naive twin over a sweep of shapes.

mod common;
use common::{check_grad, dotp, max_abs_diff, Rng};
use moe_kernels::adamw::{adamw_update, adamw_update_naive, AdamW};
use moe_kernels::attention::*;
use moe_kernels::cross_entropy::*;
use moe_kernels::embedding::*;
use moe_kernels::matmul::*;
use moe_kernels::rmsnorm::*;
use moe_kernels::rope::*;
use moe_kernels::softmax::*;
use moe_kernels::swiglu::*;

/// `matmul` (parallel or not) against its naive twin over `shapes`, every transpose, with and
/// without accumulation; `then` sees each case (a, b, the initial dst, the product, acc).
fn matmul_against_naive(
    rng: &mut Rng,
    shapes: &[(usize, usize, usize)],
    parallel: bool,
    mut then: impl FnMut(Mat<f32>, Mat<f32>, &[f32], &[f32], bool),
) {
    for &(m, k, n) in shapes {
        for &(ta, tb) in &[(false, false), (true, false), (false, true), (true, true)] {
            let (a, b) = (rng.vec32(m * k), rng.vec32(k * n));
            let av = if ta { Mat::new(&a, k, m).t() } else { Mat::new(&a, m, k) };
            let bv = if tb { Mat::new(&b, n, k).t() } else { Mat::new(&b, k, n) };
            for acc in [false, true] {
                let init = rng.vec32(m * n);
                let (mut fast, mut slow) = (init.clone(), init.clone());
                matmul(&mut fast, av, bv, acc, parallel);
                matmul_naive(&mut slow, av, bv, acc);
                let err = max_abs_diff(&fast, &slow);
                assert!(err < 1e-4 * k as f32, "({m},{k},{n}) t=({ta},{tb}) acc={acc}: {err}");
                then(av, bv, &init, &fast, acc);
            }
        }
    }
}

#[test]
fn matmul_matches_naive_over_shapes_and_transposes() {
    let shapes = [(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 130, 67), (129, 64, 257)];
    matmul_against_naive(&mut Rng::new(1), &shapes, true, |_, _, _, _, _| {});
}

/// A parallel product of many rows is cut into row pieces (one single-threaded GEMM each): the
/// result must be the single-threaded product's, bit for bit, and match the naive twin.
#[test]
fn matmul_row_pieces_equal_the_single_threaded_product() {
    let mut rng = Rng::new(11);
    for threads in [2, 3, 4] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for &(m, k, n) in &[(256, 40, 24), (301, 70, 33), (777, 17, 65)] {
            for &(ta, tb) in &[(false, false), (true, false), (false, true)] {
                let (a, b) = (rng.vec32(m * k), rng.vec32(k * n));
                let av = if ta { Mat::new(&a, k, m).t() } else { Mat::new(&a, m, k) };
                let bv = if tb { Mat::new(&b, n, k).t() } else { Mat::new(&b, k, n) };
                let init = rng.vec32(m * n);
                let (mut pieces, mut one, mut slow) = (init.clone(), init.clone(), init.clone());
                pool.install(|| matmul(&mut pieces, av, bv, true, true));
                matmul(&mut one, av, bv, true, false);
                matmul_naive(&mut slow, av, bv, true);
                assert!(pieces == one, "{threads} threads ({m},{k},{n}) t=({ta},{tb}): pieces differ");
                let err = max_abs_diff(&pieces, &slow);
                assert!(err < 1e-4 * k as f32, "{threads} threads ({m},{k},{n}): {err}");
            }
        }
    }
}

#[test]
fn linear_backward_finite_difference() {
    let mut rng = Rng::new(2);
    for &(n, i, o) in &[(1, 1, 1), (3, 5, 4), (7, 2, 9)] {
        let (x, w, r) = (rng.vec(n * i), rng.vec(o * i), rng.vec(n * o));
        let loss = |x: &[f64], w: &[f64]| {
            let mut y = vec![0.0; n * o];
            linear_forward(&mut y, x, w, n, i, o, false);
            dotp(&y, &r)
        };
        let (mut dx, mut dw) = (vec![0.0; n * i], vec![0.0; o * i]);
        linear_backward(&mut dx, &mut dw, &r, &x, &w, n, i, o, true, false);
        check_grad("linear dx", &x, &dx, |x| loss(x, &w));
        check_grad("linear dw", &w, &dw, |w| loss(&x, w));
    }
}

#[test]
fn rmsnorm_backward_finite_difference() {
    let mut rng = Rng::new(3);
    for &(n, c) in &[(1, 1), (2, 5), (3, 17), (2, 300)] {
        let (x, w, r) = (rng.vec(n * c), rng.vec(c), rng.vec(n * c));
        let loss = |x: &[f64], w: &[f64]| {
            let (mut y, mut rs) = (vec![0.0; n * c], vec![0.0; n]);
            rmsnorm_forward(&mut y, &mut rs, x, w, c, 1e-5);
            dotp(&y, &r)
        };
        let (mut y, mut rs) = (vec![0.0; n * c], vec![0.0; n]);
        rmsnorm_forward(&mut y, &mut rs, &x, &w, c, 1e-5);
        let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; c]);
        rmsnorm_backward(&mut dx, &mut dw, &r, &x, &w, &rs, c);
        check_grad("rmsnorm dx", &x, &dx, |x| loss(x, &w));
        check_grad("rmsnorm dw", &w, &dw, |w| loss(&x, w));
    }
}

#[test]
fn layernorm_backward_finite_difference() {
    use moe_kernels::layernorm::{layernorm_backward, layernorm_forward};
    let mut rng = Rng::new(21);
    for &(n, c) in &[(1, 1), (3, 5), (2, 300)] {
        let (x, r) = (rng.vec(n * c), rng.vec(n * c));
        let (w, b): (Vec<f64>, Vec<f64>) = (rng.vec(c).iter().map(|v| 1.0 + 0.3 * v).collect(), rng.vec(c));
        let run = |x: &[f64], w: &[f64], b: &[f64]| {
            let (mut y, mut m, mut s) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(&mut y, &mut m, &mut s, x, w, b, c, 1e-5);
            (y, m, s)
        };
        let loss = |x: &[f64], w: &[f64], b: &[f64]| dotp(&run(x, w, b).0, &r);
        let (y, m, s) = run(&x, &w, &b);
        // against the definition
        for (i, row) in x.chunks(c).enumerate() {
            let mu = row.iter().sum::<f64>() / c as f64;
            let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / c as f64;
            for j in 0..c {
                let want = (row[j] - mu) / (var + 1e-5).sqrt() * w[j] + b[j];
                assert!((y[i * c + j] - want).abs() < 1e-12);
            }
        }
        let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
        layernorm_backward(&mut dx, &mut dw, &mut db, &r, &x, &w, &m, &s, c);
        check_grad("layernorm dx", &x, &dx, |x| loss(x, &w, &b));
        check_grad("layernorm dw", &w, &dw, |w| loss(&x, w, &b));
        check_grad("layernorm db", &b, &db, |b| loss(&x, &w, b));
    }
}

#[test]
fn rope_backward_finite_difference_and_position_offset() {
    let mut rng = Rng::new(4);
    for &(b, t, nh, d) in &[(1, 1, 1, 2), (2, 3, 2, 4), (1, 5, 3, 8)] {
        let (mut cos, mut sin) = (vec![0.0; 8 * d / 2], vec![0.0; 8 * d / 2]);
        rope_tables(&mut cos, &mut sin, 8, d, 10000.0);
        let (x, r) = (rng.vec(b * t * nh * d), rng.vec(b * t * nh * d));
        let loss = |x: &[f64]| {
            let mut y = x.to_vec();
            rope_forward(&mut y, &cos, &sin, t, nh, d, 0);
            dotp(&y, &r)
        };
        let mut dx = r.clone();
        rope_backward(&mut dx, &cos, &sin, t, nh, d, 0);
        check_grad("rope dx", &x, &dx, loss);
    }
    // Position offset: rotating the last row of a 3-step sequence equals rotating it alone at pos0=2.
    let (mut cos, mut sin) = (vec![0.0; 4 * 2], vec![0.0; 4 * 2]);
    rope_tables(&mut cos, &mut sin, 4, 4, 10000.0);
    let x = rng.vec(3 * 4);
    let mut all = x.clone();
    rope_forward(&mut all, &cos, &sin, 3, 1, 4, 0);
    let mut last = x[8..].to_vec();
    rope_forward(&mut last, &cos, &sin, 1, 1, 4, 2);
    assert!(all[8..].iter().zip(&last).all(|(a, b)| (a - b).abs() < 1e-12));
}

#[test]
fn attention_matches_naive_and_backward_finite_difference() {
    let mut rng = Rng::new(5);
    // then value heads narrower and wider than query/key heads (latent attention), sliding
    // windows and attention sinks (gpt-oss): (shape, window (0 = none), sinks)
    let shapes =
        [(1, 1, 1, 1, 1, 1), (2, 3, 2, 1, 4, 4), (1, 5, 4, 2, 3, 3), (2, 4, 3, 3, 2, 2), (1, 19, 2, 1, 17, 17)];
    let extra = [(2, 5, 3, 3, 6, 4), (1, 4, 2, 2, 3, 5)];
    let cases = shapes.iter().chain(&extra).map(|&c| (c, 0, false)).chain([
        ((2, 6, 4, 2, 4, 4), 3, false),
        ((2, 5, 4, 2, 4, 4), 0, true),
        ((1, 7, 2, 1, 3, 3), 2, true),
    ]);
    for ((b, t, h, g, d, dvw), window, with_sinks) in cases {
        let s = AttnDims { dv: dvw, window, ..AttnDims::causal(b, t, h, g, d) };
        let (q, k, v) = (rng.vec(b * t * h * d), rng.vec(b * t * g * d), rng.vec(b * t * g * dvw));
        let r = rng.vec(b * t * h * dvw);
        let sinks = rng.vec(h);
        let sk = |x: &[f64]| -> Option<Vec<f64>> { with_sinks.then(|| x.to_vec()) };
        let run = |q: &[f64], k: &[f64], v: &[f64], z: &[f64]| {
            let (mut o, mut a) = (vec![0.0; b * t * h * dvw], vec![0.0; b * h * t * t]);
            attention_forward(&mut o, &mut a, q, k, v, sk(z).as_deref(), s);
            (o, a)
        };
        let (o, a) = run(&q, &k, &v, &sinks);
        let (mut on, mut an) = (vec![0.0; o.len()], vec![0.0; a.len()]);
        attention_forward_naive(&mut on, &mut an, &q, &k, &v, sk(&sinks).as_deref(), s);
        assert!(o.iter().zip(&on).all(|(x, y)| (x - y).abs() < 1e-12), "forward vs naive");
        assert!(a.iter().zip(&an).all(|(x, y)| (x - y).abs() < 1e-12), "probs vs naive");
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        let mut ds = vec![0.0; h];
        let mut scratch = vec![0.0; b * g * t * t];
        let dsinks = if with_sinks { Some(&mut ds[..]) } else { None };
        attention_backward(&mut dq, &mut dk, &mut dv, dsinks, &mut scratch, &r, &a, &q, &k, &v, s);
        check_grad("attn dq", &q, &dq, |q| dotp(&run(q, &k, &v, &sinks).0, &r));
        check_grad("attn dk", &k, &dk, |k| dotp(&run(&q, k, &v, &sinks).0, &r));
        check_grad("attn dv", &v, &dv, |v| dotp(&run(&q, &k, v, &sinks).0, &r));
        if with_sinks {
            check_grad("attn dsinks", &sinks, &ds, |z| dotp(&run(&q, &k, &v, z).0, &r));
        }
        let (mut dqn, mut dkn, mut dvn) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        let mut dsn = vec![0.0; h];
        let dsinks = if with_sinks { Some(&mut dsn[..]) } else { None };
        attention_backward_naive(&mut dqn, &mut dkn, &mut dvn, dsinks, &r, &an, &q, &k, &v, s);
        for (x, y) in [(&dq, &dqn), (&dk, &dkn), (&dv, &dvn), (&ds, &dsn)] {
            assert!(x.iter().zip(y).all(|(x, y)| (x - y).abs() < 1e-10), "backward vs naive");
        }
    }
}

#[test]
fn attention_over_several_query_blocks_matches_naive() {
    // Sequences longer than QUERY_BLOCK, with a partial last block: forward and backward of the
    // blocked causal kernels against the naive loops (f32 in, f64 sums in the naive twins); also
    // with a window shorter than a block, so later blocks skip the keys no row of theirs sees.
    let mut rng = Rng::new(8);
    let (b, t, h, g, d) = (2, 2 * QUERY_BLOCK + 22, 4, 2, 16);
    for window in [0, 50] {
        let s = AttnDims { window, ..AttnDims::causal(b, t, h, g, d) };
        let (q, k, v) = (rng.vec32(b * t * h * d), rng.vec32(b * t * g * d), rng.vec32(b * t * g * d));
        let r = rng.vec32(b * t * h * d);
        // the probabilities' buffer holds garbage, as a reused one does
        let (mut o, mut a) = (vec![0f32; b * t * h * d], vec![f32::NAN; b * h * t * t]);
        attention_forward(&mut o, &mut a, &q, &k, &v, None, s);
        let (mut on, mut an) = (vec![0f32; o.len()], vec![0f32; a.len()]);
        attention_forward_naive(&mut on, &mut an, &q, &k, &v, None, s);
        assert!(max_abs_diff(&o, &on) < 1e-5, "window {window}: forward: {}", max_abs_diff(&o, &on));
        assert!(max_abs_diff(&a, &an) < 1e-6, "window {window}: probabilities: {}", max_abs_diff(&a, &an));
        let init = |n: usize, rng: &mut Rng| rng.vec32(n);
        let (dq0, dk0, dv0) = (init(q.len(), &mut rng), init(k.len(), &mut rng), init(v.len(), &mut rng));
        let (mut dq, mut dk, mut dv) = (dq0.clone(), dk0.clone(), dv0.clone());
        let mut scratch = vec![f32::NAN; b * g * t * t];
        attention_backward(&mut dq, &mut dk, &mut dv, None, &mut scratch, &r, &a, &q, &k, &v, s);
        let (mut dqn, mut dkn, mut dvn) = (dq0, dk0, dv0);
        attention_backward_naive(&mut dqn, &mut dkn, &mut dvn, None, &r, &an, &q, &k, &v, s);
        for (name, x, y) in [("dq", &dq, &dqn), ("dk", &dk, &dkn), ("dv", &dv, &dvn)] {
            assert!(max_abs_diff(x, y) < 1e-4, "window {window}: {name}: {}", max_abs_diff(x, y));
        }
    }
}

#[test]
fn attention_decode_suffix_equals_full_sequence() {
    // Queries that are a suffix of the keys (KV cache) give the last rows of the full pass.
    let mut rng = Rng::new(6);
    let (b, t, h, g, d, tcap) = (2, 5, 4, 2, 8, 7);
    let (q, k, v) = (rng.vec32(b * t * h * d), rng.vec32(b * t * g * d), rng.vec32(b * t * g * d));
    let full = AttnDims::causal(b, t, h, g, d);
    let (mut o, mut a) = (vec![0f32; b * t * h * d], vec![0f32; b * h * t * t]);
    attention_forward(&mut o, &mut a, &q, &k, &v, None, full);
    // Cache of capacity 7 holding the 5 positions; one query (the last position).
    let (mut kc, mut vc) = (vec![0f32; b * tcap * g * d], vec![0f32; b * tcap * g * d]);
    for bi in 0..b {
        let src = bi * t * g * d..(bi + 1) * t * g * d;
        kc[bi * tcap * g * d..][..t * g * d].copy_from_slice(&k[src.clone()]);
        vc[bi * tcap * g * d..][..t * g * d].copy_from_slice(&v[src]);
    }
    let mut qs = vec![0f32; b * h * d];
    for bi in 0..b {
        qs[bi * h * d..][..h * d].copy_from_slice(&q[(bi * t + t - 1) * h * d..][..h * d]);
    }
    let dec = AttnDims { b, tq: 1, tk: t, tcap, h, g, d, dv: d, window: 0 };
    let (mut od, mut ad) = (vec![0f32; b * h * d], vec![0f32; b * h * t]);
    attention_forward(&mut od, &mut ad, &qs, &kc, &vc, None, dec);
    for bi in 0..b {
        let want = &o[(bi * t + t - 1) * h * d..][..h * d];
        assert!(max_abs_diff(want, &od[bi * h * d..][..h * d]) < 1e-6);
    }
}

#[test]
fn clamped_swiglu_backward_finite_difference() {
    // gpt-oss's: limit 0.8 on values of scale ~1 clamps some gates and ups, whose gradient is 0
    let mut rng = Rng::new(17);
    let n = 300;
    let (g, u, r) = (rng.vec(n), rng.vec(n), rng.vec(n));
    let (g, u): (Vec<f64>, Vec<f64>) = (g.iter().map(|x| 2.0 * x).collect(), u.iter().map(|x| 2.0 * x).collect());
    let (alpha, limit) = (1.702, 0.8);
    let loss = |g: &[f64], u: &[f64]| {
        let mut h = vec![0.0; g.len()];
        clamped_swiglu_forward(&mut h, g, u, alpha, limit);
        dotp(&h, &r[..g.len()])
    };
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    clamped_swiglu_backward(&mut dg, &mut du, &r, &g, &u, alpha, limit);
    // away from the clamp's kink, where a central difference straddles it
    let clear = |x: &[f64], lo: f64| x.iter().all(|v| (v - limit).abs() > 1e-3 && (v + lo).abs() > 1e-3);
    assert!(clear(&g, f64::INFINITY) && clear(&u, limit), "draw values away from +-limit");
    assert!(g.iter().any(|&v| v > limit) && u.iter().any(|&v| v < -limit), "some values are clamped");
    check_grad("clamped swiglu dg", &g, &dg, |gv| loss(gv, &u));
    check_grad("clamped swiglu du", &u, &du, |uv| loss(&g, uv));
    let mut h = vec![0.0; 1];
    clamped_swiglu_forward(&mut h, &[0.5], &[-0.3], alpha, limit);
    let want = (1.0 - 0.3) * 0.5 / (1.0 + (-alpha * 0.5f64).exp());
    assert!((h[0] - want).abs() < 1e-15, "{} vs {want}", h[0]);
}

#[test]
fn swiglu_backward_finite_difference() {
    let mut rng = Rng::new(7);
    for n in [1, 7, 5000] {
        let n_check = n.min(64);
        let (g, u, r) = (rng.vec(n), rng.vec(n), rng.vec(n));
        let loss = |g: &[f64], u: &[f64]| {
            let mut h = vec![0.0; g.len()];
            swiglu_forward(&mut h, g, u);
            dotp(&h, &r[..g.len()])
        };
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        swiglu_backward(&mut dg, &mut du, &r, &g, &u);
        // Elementwise: checking a prefix checks the kernel, including past its 4096 block.
        let (gs, us) = (&g[..n_check], &u[..n_check]);
        check_grad("swiglu dg", gs, &dg[..n_check], |gv| loss(gv, us));
        check_grad("swiglu du", us, &du[..n_check], |uv| loss(gs, uv));
        if n > 4096 {
            let tail = n - 3..n;
            let (gt, ut) = (&g[tail.clone()], &u[tail.clone()]);
            let rt = r[tail.clone()].to_vec();
            let l = |gv: &[f64]| {
                let mut h = vec![0.0; 3];
                swiglu_forward(&mut h, gv, ut);
                dotp(&h, &rt)
            };
            check_grad("swiglu dg tail", gt, &dg[tail], l);
        }
    }
}

#[test]
fn softmax_backward_finite_difference() {
    let mut rng = Rng::new(8);
    for &(n, e) in &[(1, 1), (2, 3), (3, 9)] {
        let (x, r) = (rng.vec(n * e), rng.vec(n * e));
        let loss = |x: &[f64]| {
            let mut y = vec![0.0; n * e];
            softmax_forward(&mut y, x, e);
            dotp(&y, &r)
        };
        let mut y = vec![0.0; n * e];
        softmax_forward(&mut y, &x, e);
        let mut dx = vec![0.0; n * e];
        softmax_backward(&mut dx, &r, &y, e);
        check_grad("softmax dx", &x, &dx, loss);
    }
}

#[test]
fn cross_entropy_backward_finite_difference() {
    let mut rng = Rng::new(9);
    for &(n, v) in &[(1, 1), (2, 5), (4, 11)] {
        let x: Vec<f64> = rng.vec(n * v).iter().map(|z| z * 3.0).collect();
        let targets: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % v) as u32).collect();
        let loss = |x: &[f64]| {
            let mut l = vec![0.0; n];
            cross_entropy_forward(&mut l, x, &targets, v);
            l.iter().sum::<f64>() / n as f64
        };
        let mut d = vec![0.0; n * v];
        cross_entropy_backward(&mut d, &x, &targets, v, 1.0 / n as f64);
        check_grad("ce dlogits", &x, &d, loss);
        let mut inplace = x.clone();
        let mut losses = vec![0.0; n];
        cross_entropy_forward(&mut losses, &x, &targets, v);
        cross_entropy_backward_inplace(&mut inplace, &losses, &targets, v, 1.0 / n as f64);
        assert!(inplace.iter().zip(&d).all(|(a, b)| (a - b).abs() < 1e-14));
    }
}

#[test]
fn embedding_backward_finite_difference() {
    let mut rng = Rng::new(10);
    let (v, c, tokens) = (5, 3, vec![1u32, 4, 1, 0]);
    let (w, r) = (rng.vec(v * c), rng.vec(tokens.len() * c));
    let loss = |w: &[f64]| {
        let mut o = vec![0.0; tokens.len() * c];
        embedding_forward(&mut o, w, &tokens, c);
        dotp(&o, &r)
    };
    let mut dw = vec![0.0; v * c];
    embedding_backward(&mut dw, &r, &tokens, c);
    check_grad("embedding dw", &w, &dw, loss);
}

#[test]
fn adamw_matches_naive() {
    let mut rng = Rng::new(11);
    let h = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, grad_scale: 0.37 };
    for n in [1, 13, 20000] {
        let (mut p1, g) = (rng.vec32(n), rng.vec32(n));
        let (mut m1, mut v1) = (vec![0f32; n], vec![0f32; n]);
        let (mut p2, mut m2, mut v2) = (p1.clone(), m1.clone(), v1.clone());
        for step in 1..=3 {
            for decay in [true, false] {
                adamw_update(&mut p1, &g, &mut m1, &mut v1, &h, step, decay);
                adamw_update_naive(&mut p2, &g, &mut m2, &mut v2, &h, step, decay);
            }
        }
        assert!(max_abs_diff(&p1, &p2) < 1e-5, "params");
        assert!(max_abs_diff(&m1, &m2) < 1e-6 && max_abs_diff(&v1, &v2) < 1e-6, "moments");
    }
}

#[test]
fn fast_exp_matches_libm() {
    use moe_kernels::float::exp_f32;
    let mut worst = 0.0f64;
    for i in 0..=2_000_000 {
        let x = -87.0 + 175.0 * i as f32 / 2_000_000.0;
        let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst < 3e-7, "relative error {worst:e}");
    assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp_f32(-100.0), 0.0);
    assert_eq!(exp_f32(0.0), 1.0);
    assert!(exp_f32(1000.0).is_finite());
    assert!(exp_f32(f32::NAN).is_nan());
    // The ends of the range, where 2^n reaches the smallest and largest normal exponents.
    for x in [-87.336_55f32, 88.0] {
        let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
        assert!(((got - want) / want).abs() < 3e-7, "exp({x}) = {got}, want {want}");
    }
}

#[test]
fn sum_sq_f64_matches_sequential_sum() {
    use moe_kernels::float::sum_sq_f64;
    // lengths around the lane count, including empty and tails
    for n in [0usize, 1, 15, 16, 17, 33, 1000, 65_537] {
        let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 1.7e-3 + (i % 3) as f32).collect();
        let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        let got = sum_sq_f64(&x);
        assert!((got - want).abs() <= 1e-12 * want.max(1.0), "n {n}: {got} vs {want}");
    }
}

#[test]
fn zeroed_buffers_are_zero_and_writable_small_and_huge() {
    use moe_kernels::buffer::zeroed;
    // below, at and past the 2 MiB huge-page size, odd lengths included
    for len in [0usize, 1, 1000, (2 << 20) / 4, (5 << 20) / 4 + 3] {
        let mut v = zeroed::<f32>(len);
        assert_eq!(v.len(), len);
        assert!(v.iter().all(|&x| x == 0.0), "len {len}");
        v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32), "len {len}");
    }
    assert!(zeroed::<f64>(1 << 19).iter().all(|&x| x == 0.0));
}

/// Single-threaded products of few rows (the expert GEMMs: the forward ones on the AVX-512
/// few-row kernel when the CPU has it) over every transpose, narrow last column panels, k not a
/// multiple of 16, and accumulation; and on that kernel a row's result does not depend on the
/// other rows of the call.
#[test]
fn small_row_products_match_naive_and_are_row_independent() {
    let shapes = [(1, 1, 1), (5, 7, 3), (12, 16, 32), (13, 33, 17), (48, 128, 128), (97, 64, 70), (255, 40, 48)];
    matmul_against_naive(&mut Rng::new(12), &shapes, false, |av, bv, init, fast, acc| {
        // the last rows alone, at their own offset
        let (h, n) = (av.rows / 3, bv.cols);
        let tail = Mat { data: &av.data[h * av.rs..], rows: av.rows - h, ..av };
        #[cfg(target_arch = "x86_64")]
        if !(moe_kernels::small_gemm::takes(&av, &bv) && moe_kernels::small_gemm::takes(&tail, &bv)) {
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        return;
        let mut part = init[h * n..].to_vec();
        matmul(&mut part, tail, bv, acc, false);
        assert!(part == fast[h * n..], "{:?} acc={acc}: rows depend on the others", (av.rows, av.cols, n));
    });
}

/// The router's fused softmax + logsumexp gives logsumexp's value bit for bit (rows up to 256)
/// and the softmax, both against an f64 reference.
#[test]
fn softmax_row_lse_matches_logsumexp_and_reference() {
    let mut rng = Rng::new(13);
    for e in [1, 3, 16, 17, 64, 256] {
        let x: Vec<f32> = rng.vec32(e).iter().map(|v| v * 8.0).collect();
        let mut y = vec![0f32; e];
        let lse = softmax_row_lse(&mut y, &x);
        assert_eq!(lse.to_bits(), logsumexp(&x).to_bits(), "e={e}");
        let m = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
        assert!((lse as f64 - (m + s.ln())).abs() < 1e-5, "e={e}: lse {lse}");
        for (&p, &v) in y.iter().zip(&x) {
            assert!((p as f64 - (v as f64 - m).exp() / s).abs() < 1e-6, "e={e}: softmax");
        }
    }
}

/// `buffer::release` zeroes any slice (inside one page, across pages, many pages, unaligned
/// ends) and the buffer stays usable.
#[test]
fn released_buffers_read_as_zeros_and_stay_writable() {
    let mut v: Vec<f32> = (0..300_000).map(|i| i as f32 + 1.0).collect();
    for (lo, hi) in [(3, 10), (1000, 1030), (5, 5000), (7, 299_991), (0, 300_000)] {
        moe_kernels::buffer::release(&mut v[lo..hi]);
        assert!(v[lo..hi].iter().all(|&x| x == 0.0), "{lo}..{hi}");
        if lo > 0 {
            assert_eq!(v[lo - 1], (lo - 1) as f32 + 1.0, "the value before {lo} kept");
        }
        v[lo..hi].iter_mut().enumerate().for_each(|(i, x)| *x = (lo + i) as f32 + 1.0);
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32 + 1.0));
}
