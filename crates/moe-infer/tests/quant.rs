//! Q8_0 quantisation on load: every block's values come back within half a quantisation step,
//! the in-place dot product equals the dot product of the decoded row, and a quantised model's
//! logits stay close to full precision (the bound is loose on purpose: int8 weights are not exact).

use moe_infer::{Cache, Model};
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn q8_0_round_trip_and_dot() {
    let m = Model::load(&dir("olmoe")).unwrap();
    let w = m.store.weight("model.layers.0.self_attn.q_proj.weight", &[32, 32]).unwrap();
    let q = w.quantize_q8_0().expect("32 columns quantise");
    let (mut a, mut b) = (vec![0.0f32; 32], vec![0.0f32; 32]);
    let x: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
    for r in 0..32 {
        w.row_f32(r, &mut a);
        q.row_f32(r, &mut b);
        let step = a.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() <= 0.5 * step * 1.01 + 1e-6, "row {r}: {u} vs {v} (step {step})");
        }
        let want: f32 = b.iter().zip(&x).map(|(u, v)| u * v).sum();
        assert!((q.dot_row(r, &x) - want).abs() < 1e-5, "row {r}");
        // integer path: x quantised to Q8_0 too; its error is at most sum |w| * step_x / 2
        let (mut xq, mut xd) = (vec![0i8; 32], vec![0.0f32; 1]);
        moe_infer::weight::quantize_q8_row(&x, &mut xq, &mut xd);
        let bound: f32 = b.iter().map(|v| v.abs()).sum::<f32>() * xd[0] / 2.0 + 1e-5;
        assert!((q.dot_row_q8(r, &xq, &xd) - want).abs() <= bound, "row {r}: integer dot");
    }
}

#[test]
fn q8_0_logits_stay_close_to_full_precision() {
    for name in ["mixtral", "qwen3_moe", "deepseek_v3"] {
        let full = Model::load(&dir(name)).unwrap();
        let mut q = Model::load(&dir(name)).unwrap();
        let mut last = (0, 1);
        assert!(q.quantize_q8_0(&mut |d, t| last = (d, t)) > 0, "{name}: nothing quantised");
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
        assert!(derr < 0.05 * scale, "{name}: q8_0 decode logits differ by {derr} of {scale}");
        let err = a.iter().zip(&b).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max);
        eprintln!("{name}: q8_0 logits max abs diff {err:.4} (max |logit| {scale:.2})");
        assert!(err < 0.05 * scale, "{name}: q8_0 logits differ by {err} of {scale}");
    }
}
