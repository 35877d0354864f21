//! Q8_0 and Q4_0 quantisation on load: every block's values come back within half a
//! quantisation step, the in-place dot products equal the dot product of the decoded row, and a
//! quantised model's logits stay close to full precision (loose bounds on purpose: 8- and 4-bit
//! weights are not exact).

use moe_infer::weight::Quant;
use moe_infer::{Cache, Model};
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn q8_0_round_trip_and_dot() {
    round_trip_and_dot(Quant::Q8_0, 127.0, 0.5);
}

#[test]
fn q4_0_round_trip_and_dot() {
    // d = max / -8: the largest value maps to q = 0 exactly; steps are max|x| / 8, and values
    // beyond 7 steps on the other side clamp to q = 15, off by up to one step.
    round_trip_and_dot(Quant::Q4_0, 8.0, 1.0);
}

/// Decoded values within `within` quantisation steps (max|x| / levels) of the originals.
fn round_trip_and_dot(kind: Quant, levels: f32, within: f32) {
    let m = Model::load(&dir("olmoe")).unwrap();
    let w = m.store.weight("model.layers.0.self_attn.q_proj.weight", &[32, 32]).unwrap();
    let q = w.quantize(kind).expect("32 columns quantise");
    let (mut a, mut b) = (vec![0.0f32; 32], vec![0.0f32; 32]);
    let x: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
    for r in 0..32 {
        w.row_f32(r, &mut a);
        q.row_f32(r, &mut b);
        let step = a.iter().fold(0.0f32, |m, v| m.max(v.abs())) / levels;
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() <= within * step * 1.01 + 1e-6, "{kind:?} row {r}: {u} vs {v} (step {step})");
        }
        let want: f32 = b.iter().zip(&x).map(|(u, v)| u * v).sum();
        assert!((q.dot_row(r, &x) - want).abs() < 1e-5, "row {r}");
        // integer path: x quantised to Q8_0 too; its error is at most sum |w| * step_x / 2
        let (mut xq, mut xd) = (vec![0i8; 32], vec![0.0f32; 1]);
        moe_infer::weight::quantize_q8_row(&x, &mut xq, &mut xd);
        let bound: f32 = b.iter().map(|v| v.abs()).sum::<f32>() * xd[0] / 2.0 + 1e-5;
        let xs = moe_infer::qdot::block_sums(&xq);
        assert!((q.dot_row_q8(r, &xq, &xd, &xs) - want).abs() <= bound, "row {r}: integer dot");
    }
}

#[test]
fn q8_0_logits_stay_close_to_full_precision() {
    logits_stay_close(Quant::Q8_0, 0.05);
}

#[test]
fn q4_0_model_equals_its_float_twin() {
    // 4-bit weights are far from the originals on these tiny random models (16 levels per
    // block of 32), so the check is against the f32 model holding exactly the decoded weights.
    // Products of a few tokens (decoding, and experts that got few tokens) quantise the
    // activations to Q8_0 for integer dots: close to the twin, not equal.
    for name in ["mixtral", "qwen3_moe", "deepseek_v3"] {
        let mut q = Model::load(&dir(name)).unwrap();
        q.quantize(Quant::Q4_0, &mut |_, _| {});
        let mut twin = Model::load(&dir(name)).unwrap();
        twin.quantize(Quant::Q4_0, &mut |_, _| {});
        twin.dequantize();
        let ids = [1u32, 5, 9, 17, 33, 40, 61, 70];
        let (mut cq, mut ct) = (Cache::new(&q.spec), Cache::new(&twin.spec));
        let a = q.forward(&ids, &mut cq, true).unwrap();
        let b = twin.forward(&ids, &mut ct, true).unwrap();
        let err = a.iter().zip(&b).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max);
        let pscale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!("{name}: Q4_0 prefill vs float twin max abs diff {err:.4} (max |logit| {pscale:.2})");
        assert!(err < 0.05 * pscale, "{name}: Q4_0 prefill differs from its float twin by {err} of {pscale}");
        let (da, db) = (q.forward(&[3], &mut cq, false).unwrap(), twin.forward(&[3], &mut ct, false).unwrap());
        let scale = db.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let derr = da.iter().zip(&db).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max);
        eprintln!("{name}: Q4_0 decode vs float twin max abs diff {derr:.4} (max |logit| {scale:.2})");
        assert!(derr < 0.05 * scale, "{name}: Q4_0 decode differs from its float twin by {derr} of {scale}");
    }
}

fn logits_stay_close(kind: Quant, tol: f32) {
    for name in ["mixtral", "qwen3_moe", "deepseek_v3"] {
        let full = Model::load(&dir(name)).unwrap();
        let mut q = Model::load(&dir(name)).unwrap();
        let mut last = (0, 1);
        assert!(q.quantize(kind, &mut |d, t| last = (d, t)) > 0, "{name}: nothing quantised");
        assert_eq!(last.0, last.1, "{name}: progress ends at the total");
        let ids = [1u32, 5, 9, 17, 33, 40, 61, 70];
        let a = full.forward(&ids, &mut Cache::new(&full.spec), true).unwrap();
        let b = q.forward(&ids, &mut Cache::new(&q.spec), true).unwrap();
        // decoding one token goes through the integer dot products
        let (mut ca, mut cb) = (Cache::new(&full.spec), Cache::new(&q.spec));
        full.forward(&ids, &mut ca, false).unwrap();
        q.forward(&ids, &mut cb, false).unwrap();
        let (da, db) = (full.forward(&[3], &mut ca, false).unwrap(), q.forward(&[3], &mut cb, false).unwrap());
        let derr = da.iter().zip(&db).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max);
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(derr < tol * scale, "{name}: {kind:?} decode logits differ by {derr} of {scale}");
        let err = a.iter().zip(&b).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max);
        eprintln!("{name}: {kind:?} logits max abs diff {err:.4} (max |logit| {scale:.2})");
        assert!(err < tol * scale, "{name}: {kind:?} logits differ by {err} of {scale}");
    }
}
