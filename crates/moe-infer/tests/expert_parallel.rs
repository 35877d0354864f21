//! Expert parallelism on Hugging Face checkpoints: every architecture's fixture, its experts
//! spread over 2 and 4 in-process ranks (each keeping only its own, quantised or not), gives
//! the logits of one process; a rank count that does not divide the experts is refused.

mod common;

use common::FIXTURES;
use moe_engine::dist::{thread_ranks, Comm};
use moe_infer::weight::Quant;
use moe_infer::{Cache, Model};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn load(name: &str, quant: Option<Quant>) -> Model {
    let mut m = Model::load(&dir(name)).unwrap();
    if let Some(q) = quant {
        m.quantize(q, &mut |_, _| {});
    }
    m
}

/// Logits [T, V] of `ids` on one process and on each of `p` ranks.
fn logits(name: &str, p: usize, quant: Option<Quant>, ids: &[u32]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let one = load(name, quant);
    let want = one.forward(ids, &mut Cache::new(&one.spec), true).unwrap();
    let comms = thread_ranks(p, Duration::from_secs(60));
    let got = std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    let mut m = Model::load(&dir(name)).unwrap();
                    let (rank, e) = (c.rank(), m.spec.moe.experts);
                    m.shard_experts(Arc::new(c)).unwrap();
                    // Only this rank's experts are left (and quantised).
                    for l in &m.w.layers {
                        if let moe_infer::load::FfnW::Moe(moe) = &l.ffn {
                            let held: Vec<usize> = (0..e).filter(|&x| moe.experts[x].is_some()).collect();
                            assert_eq!(held, (rank * e / p..(rank + 1) * e / p).collect::<Vec<_>>());
                        }
                    }
                    if let Some(q) = quant {
                        m.quantize(q, &mut |_, _| {});
                    }
                    m.forward(ids, &mut Cache::new(&m.spec), true).unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (want, got)
}

#[test]
fn ranks_holding_their_experts_give_the_logits_of_one_process() {
    let ids = [1u32, 5, 9, 2, 7, 3];
    for name in FIXTURES {
        let e = Model::load(&dir(name)).unwrap().spec.moe.experts;
        for p in [2, 4].into_iter().filter(|p| e.is_multiple_of(*p)) {
            for quant in [None, Some(Quant::Q8_0)] {
                let (want, got) = logits(name, p, quant, &ids);
                for (rank, g) in got.iter().enumerate() {
                    let diff = g.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    assert!(
                        diff <= 1e-5 * scale.max(1.0),
                        "{name} P={p} {quant:?} rank {rank}: logits differ by {diff}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_rank_count_that_does_not_divide_the_experts_is_refused() {
    let comms = thread_ranks(3, Duration::from_secs(10));
    let mut m = Model::load(&dir("mixtral")).unwrap();
    let c = comms.into_iter().next().unwrap();
    let e = m.shard_experts(Arc::new(c)).unwrap_err().to_string();
    assert!(e.contains("4 experts cannot be split evenly over 3 ranks"), "{e}");
}
