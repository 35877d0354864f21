//! Continuous batching is exact: several sequences stepped together through
//! `Model::forward_batch` (prompt chunks of different lengths next to one-token decode steps,
//! sequences joining and leaving) give the logits each sequence gets alone, for every
//! architecture (including PhiMoE's LongRoPE switch, crossed inside a batch) and float GGUF files.

mod common;

use common::FIXTURES;
use moe_infer::{Cache, Model, Seq};
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A deterministic stream of token ids below `vocab`.
fn ids(n: usize, seed: u32, vocab: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7919 + seed * 104729 + 13) % vocab as u32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check(name: &str) {
    let m = Model::load(&dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let v = m.spec.vocab;
    // Three sequences; each round feeds each live one the next piece of its stream:
    // (sequence, tokens) per round. Sequence 2 joins in round 1, sequence 0 leaves after round 2.
    let streams = [ids(40, 1, v), ids(40, 2, v), ids(40, 3, v)];
    let rounds: [&[(usize, usize)]; 5] = [
        &[(0, 7), (1, 3)],
        &[(0, 1), (1, 1), (2, 9)],
        &[(0, 1), (1, 5), (2, 1)],
        &[(1, 1), (2, 1)],
        &[(1, 1), (2, 20)],
    ];
    let (mut batched, mut alone) = (vec![], vec![]);
    for _ in 0..3 {
        batched.push(Cache::new(&m.spec));
        alone.push(Cache::new(&m.spec));
    }
    let mut fed = [0usize; 3];
    for (ri, round) in rounds.iter().enumerate() {
        let all = ri % 2 == 1;
        let pieces: Vec<(usize, &[u32])> = round.iter().map(|&(s, n)| (s, &streams[s][fed[s]..fed[s] + n])).collect();
        let mut seqs = vec![];
        let mut rest: &mut [Cache] = &mut batched;
        let mut taken = 0;
        for &(s, tokens) in &pieces {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(s + 1 - taken);
            seqs.push(Seq { tokens, cache: &mut head[s - taken] });
            rest = tail;
            taken = s + 1;
        }
        let got = m.forward_batch(&mut seqs, all).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (&(s, tokens), g) in pieces.iter().zip(&got) {
            let want = m.forward(tokens, &mut alone[s], all).unwrap();
            let err = max_diff(g, &want);
            assert!(err < 1e-4, "{name}: round {ri}, sequence {s}: batched logits differ by {err:e}");
            fed[s] += tokens.len();
        }
    }
    for (b, a) in batched.iter().zip(&alone) {
        assert_eq!(b.len, a.len, "{name}: cache lengths");
        assert_eq!(b.tokens, a.tokens, "{name}: cached tokens");
    }
}

#[test]
fn every_architecture_batches_exactly() {
    for name in FIXTURES {
        check(name);
    }
}

/// Float GGUF files. (Quantised weights are not batch-invariant, here as in llama.cpp: a step
/// of a few rows quantises the activations to Q8_0 for integer dot products, a larger one
/// multiplies decoded f32 panels, so a sequence's logits depend on the rows it shares a step
/// with, within the quantisation error.)
#[test]
fn gguf_files_batch_exactly() {
    check("gguf/mixtral-f32.gguf");
    check("gguf/olmoe-f32.gguf");
}
