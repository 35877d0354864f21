//! The memory budget for experts: with room for only a few experts, decoding gives exactly the
//! logits of the unlimited model while experts are released and read again (counted), the
//! resident experts stay within the budget, and the next layer's experts are prefetched; budgets
//! that cannot work are refused.

use moe_infer::weight::Quant;
use moe_infer::{Cache, Model};
use std::path::PathBuf;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Greedy decoding of 12 tokens: every step's logits.
fn decode(m: &Model) -> Vec<Vec<f32>> {
    let mut cache = Cache::new(&m.spec);
    let mut logits = m.forward(&[1, 5, 9, 2], &mut cache, false).unwrap();
    let mut all = vec![logits.clone()];
    for _ in 0..12 {
        let next = moe_engine::generate::argmax(&logits);
        logits = m.forward(&[next], &mut cache, false).unwrap();
        all.push(logits.clone());
    }
    all
}

#[test]
fn a_small_budget_changes_nothing_but_what_is_read() {
    for name in ["mixtral", "deepseek_v3", "qwen2_moe", "gguf/mixtral-q8_0.gguf"] {
        let full = Model::load(&path(name)).unwrap();
        let want = decode(&full);
        let mut m = Model::load(&path(name)).unwrap();
        // Room for the shared weights and two experts.
        let shared: u64 = m.store.entries.values().map(|e| (e.end - e.start) as u64).sum::<u64>()
            - moe_infer::expert_cache::ExpertCache::new(&m.w, 0).expert_bytes();
        let expert = {
            let c = moe_infer::expert_cache::ExpertCache::new(&m.w, 0);
            c.expert_bytes()
                / (m.spec.moe.experts * m.spec.ffn.iter().filter(|f| matches!(f, moe_infer::config::Ffn::Moe)).count())
                    as u64
        };
        let budget = m.set_max_memory(shared + 2 * expert).unwrap();
        assert_eq!(budget, 2 * expert);
        let got = decode(&m);
        assert_eq!(got, want, "{name}: logits changed under a memory budget");
        let s = m.cache_stats().unwrap();
        let uses = s.hits + s.misses;
        assert!(uses > 0 && s.misses > 0 && s.evictions > 0, "{name}: {s:?}");
        // Every use beyond the first of an expert that was released is a miss again.
        assert!(s.misses > (m.spec.moe.experts as u64).min(uses / 4), "{name}: {s:?}");
        assert_eq!(s.bytes_read, s.misses * expert, "{name}: {s:?}");
        // Within budget: a layer whose routed experts exceed it (the prompt's, top-k > 2) runs
        // them in groups that fit.
        assert!(s.peak_bytes <= budget, "{name}: {s:?}");
        assert!(s.prefetched > 0 && s.prefetch_used <= s.prefetched, "{name}: {s:?}");
    }
}

#[test]
fn an_unlimited_budget_reads_each_expert_once() {
    let mut m = Model::load(&path("mixtral")).unwrap();
    m.set_max_memory(u64::MAX / 2).unwrap();
    decode(&m);
    let s = m.cache_stats().unwrap();
    assert_eq!(s.evictions, 0);
    assert!(s.misses <= 2 * 4, "{s:?}"); // 2 MoE layers x 4 experts
    assert!(s.hit_rate() > 0.5, "{s:?}");
}

#[test]
fn budgets_that_cannot_work_are_refused() {
    let mut m = Model::load(&path("mixtral")).unwrap();
    let e = m.set_max_memory(1000).unwrap_err().to_string();
    assert!(e.contains("does not hold the shared") && e.contains("raise it"), "{e}");
    let mut q = Model::load(&path("mixtral")).unwrap();
    q.quantize(Quant::Q8_0, &mut |_, _| {});
    let e = q.set_max_memory(1 << 30).unwrap_err().to_string();
    assert!(e.contains("--quant") && e.contains("GGUF"), "{e}");
}
