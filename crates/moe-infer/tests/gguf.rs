//! GGUF files written by llama.cpp's own converter from the Hugging Face fixtures
//! (`scripts/gguf_fixtures.py`): f32 files give transformers' logits (1e-4) and greedy tokens;
//! Q8_0 and Q4_0 files hold the f32 weights within one quantisation step and run like the f32
//! model holding exactly their decoded weights; Q4_K_M and Q5_K_M files from llama-quantize
//! decode exactly as gguf-py's reference does; truncated, corrupted and unsupported files give
//! errors naming the problem, never a panic (a deterministic fuzz loop over the header and
//! tensor directory).

use moe_infer::{Cache, Model, Seq};
use safetensors::SafeTensors;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn gguf(name: &str) -> PathBuf {
    fixtures().join("gguf").join(format!("{name}.gguf"))
}

/// (prompt ids, transformers logits [T, V], greedy continuation) of a Hugging Face fixture.
fn reference(hf: &str) -> (Vec<u32>, Vec<f32>, Vec<u32>) {
    let bytes = std::fs::read(fixtures().join(hf).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        st.tensor(k).unwrap().data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect()
    };
    let logits = st.tensor("logits").unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()));
    (ids("input_ids"), logits.collect(), ids("greedy"))
}

/// Max abs difference of the GGUF model's logits from transformers', and its greedy tokens.
fn run(file: &str, hf: &str) -> (f32, Vec<u32>, Vec<u32>) {
    let m = Model::load(&gguf(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let (ids, want, greedy) = reference(hf);
    let got = m.forward(&ids, &mut Cache::new(&m.spec), true).unwrap();
    assert_eq!(got.len(), want.len(), "{file}: logits size");
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let mut cache = Cache::new(&m.spec);
    let mut logits = m.forward(&ids, &mut cache, false).unwrap();
    let mut out = vec![];
    for _ in 0..greedy.len() {
        let next = moe_engine::generate::argmax(&logits);
        out.push(next);
        logits = m.forward(&[next], &mut cache, false).unwrap();
    }
    (err, out, greedy)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Max abs difference of the logits of GGUF file `file` from those of the f32 model holding its
/// decoded weights, and the largest |logit| of the latter.
fn float_twin_diff(file: &str) -> (f32, f32) {
    let q = Model::load(&gguf(file)).unwrap();
    let mut twin = Model::load(&gguf(file)).unwrap();
    twin.dequantize();
    let ids = [1u32, 5, 9, 17, 33, 40, 61, 70];
    let a = q.forward(&ids, &mut Cache::new(&q.spec), true).unwrap();
    let b = twin.forward(&ids, &mut Cache::new(&twin.spec), true).unwrap();
    (max_diff(&a, &b), b.iter().fold(0.0f32, |m, v| m.max(v.abs())))
}

/// The same for a step of more than 64 rows per matrix (eight sequences of 40 tokens: every
/// expert gets well over 64 of the 640 routed rows), which takes the int8 GEMM (`qgemm`, the
/// activations quantised to Q8_0 as the dot products do) where it is built, and otherwise
/// decodes the weights to f32 panels (equal to the float twin).
fn float_twin_diff_panels(file: &str) -> (f32, f32) {
    let q = Model::load(&gguf(file)).unwrap();
    let mut twin = Model::load(&gguf(file)).unwrap();
    twin.dequantize();
    let prompts: Vec<Vec<u32>> = (0..8).map(|s| (0..40).map(|i| (i * (7 + 2 * s) + s + 1) % 128).collect()).collect();
    let run = |m: &Model| {
        let mut caches: Vec<Cache> = prompts.iter().map(|_| Cache::new(&m.spec)).collect();
        let mut seqs: Vec<Seq> = prompts.iter().zip(&mut caches).map(|(p, c)| Seq { tokens: p, cache: c }).collect();
        m.forward_batch(&mut seqs, true).unwrap().concat()
    };
    let (a, b) = (run(&q), run(&twin));
    (max_diff(&a, &b), b.iter().fold(0.0f32, |m, v| m.max(v.abs())))
}

#[test]
fn f32_gguf_files_give_the_logits_of_transformers() {
    // DeepSeek-V3: MLA with kv_b_proj joined back from llama.cpp's k_b/v_b, YaRN, grouped
    // sigmoid routing with the selection bias, a dense first layer and a shared expert.
    for (file, hf) in [
        ("mixtral-f32", "mixtral"),
        ("qwen3_moe-f32", "qwen3_moe"),
        ("granitemoe-f32", "granitemoe"),
        ("deepseek_v3-f32", "deepseek_v3"),
    ] {
        let (err, got, want) = run(file, hf);
        assert!(err < 1e-4, "{file}: logits differ from transformers by {err:e}");
        assert_eq!(got, want, "{file}: greedy generation differs from transformers");
    }
}

#[test]
fn olmoe_gguf_equals_the_hugging_face_checkpoint_without_qkv_clipping() {
    // llama.cpp's converter drops OLMoE's clip_qkv (the fixture sets 0.8; released OLMoE
    // models have none), so the GGUF file is compared with the same checkpoint read from
    // safetensors with the clipping removed from its config.
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixtures().join("olmoe")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("clip_qkv");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let hf = Model::load(tmp.path()).unwrap();
    let g = Model::load(&gguf("olmoe-f32")).unwrap();
    let ids = [1u32, 5, 9, 17, 33, 40, 61, 70];
    let a = g.forward(&ids, &mut Cache::new(&g.spec), true).unwrap();
    let b = hf.forward(&ids, &mut Cache::new(&hf.spec), true).unwrap();
    assert!(max_diff(&a, &b) < 1e-4, "olmoe: GGUF and safetensors differ by {}", max_diff(&a, &b));
}

#[test]
fn quantised_gguf_files_hold_llama_cpp_blocks_read_in_place() {
    let f32m = Model::load(&gguf("mixtral-f32")).unwrap();
    for (file, dtype, levels) in [("mixtral-q8_0", "Q8_0", 127.0f32), ("mixtral-q4_0", "Q4_0", 8.0)] {
        let q = Model::load(&gguf(file)).unwrap();
        // Every quantised tensor is the f32 one within one step (block max / levels).
        let mut quantised = 0;
        for (name, e) in &q.store.entries {
            let wq = q.store.weight(name, &e.shape).unwrap();
            if wq.dtype.is_float() {
                continue;
            }
            quantised += 1;
            let wf = f32m.store.weight(name, &e.shape).unwrap();
            let (mut rq, mut rf) = (vec![0.0; wq.cols], vec![0.0; wf.cols]);
            for r in 0..wq.rows {
                wq.row_f32(r, &mut rq);
                wf.row_f32(r, &mut rf);
                for (bq, bf) in rq.chunks_exact(32).zip(rf.chunks_exact(32)) {
                    let step = bf.iter().fold(0.0f32, |m, v| m.max(v.abs())) / levels;
                    assert!(max_diff(bq, bf) <= step * 1.01 + 1e-6, "{file} {name} row {r}");
                }
            }
        }
        assert!(quantised >= 10, "{file}: only {quantised} {dtype} tensors");
        // Run in place, they give the logits of the f32 model holding their decoded weights
        // (activations are quantised to Q8_0 for the integer dot products: close, not equal).
        let (diff, scale) = float_twin_diff(file);
        assert!(diff < 0.05 * scale, "{file}: differs from its float twin by {diff}");
    }
}

/// Where the type field of tensor `name` sits in the directory of `bytes`.
fn type_offset(bytes: &[u8], name: &str) -> usize {
    let at = bytes.windows(name.len()).position(|w| w == name.as_bytes()).expect("tensor in the directory");
    let after = at + name.len();
    let n_dims = u32::from_le_bytes(bytes[after..after + 4].try_into().unwrap()) as usize;
    after + 4 + 8 * n_dims
}

fn load_bytes(bytes: &[u8]) -> Result<Model, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    std::fs::write(&p, bytes).unwrap();
    Model::load(&p).map_err(|e| e.to_string())
}

#[test]
fn unsupported_tensor_types_are_refused_by_name() {
    let mut bytes = std::fs::read(gguf("mixtral-q8_0")).unwrap();
    let at = type_offset(&bytes, "blk.0.ffn_up_exps.weight");
    bytes[at..at + 4].copy_from_slice(&16u32.to_le_bytes()); // IQ2_XXS
    let e = load_bytes(&bytes).map(|_| ()).unwrap_err();
    assert!(e.contains("IQ2_XXS") && e.contains("experts.up_proj") && e.contains("m.gguf"), "{e}");
    // A k-quant type on rows that are not whole super-blocks of 256.
    bytes[at..at + 4].copy_from_slice(&12u32.to_le_bytes()); // Q4_K
    let e = load_bytes(&bytes).map(|_| ()).unwrap_err();
    assert!(e.contains("Q4_K rows of 32 values are not whole blocks of 256"), "{e}");
}

#[test]
fn deepseek_files_with_softmax_gating_are_refused() {
    // expert_gating_func 1 (softmax: DeepSeek-V2 and V2.5) instead of the file's 2 (sigmoid).
    let mut bytes = std::fs::read(gguf("deepseek_v3-f32")).unwrap();
    let key = b"deepseek2.expert_gating_func";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 4, "a uint32 value");
    assert_eq!(u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()), 2, "sigmoid");
    bytes[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes());
    let e = load_bytes(&bytes).map(|_| ()).unwrap_err();
    assert!(e.contains("deepseek2") && e.contains("softmax"), "{e}");
}

#[test]
fn zero_heads_are_refused_not_divided_by() {
    let mut bytes = std::fs::read(gguf("mixtral-q8_0")).unwrap();
    let key = b"llama.attention.head_count\x04\x00\x00\x00"; // the key, then its uint32 type
    let at = bytes.windows(key.len()).position(|w| w == key).expect("head_count as uint32") + key.len();
    bytes[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
    let e = load_bytes(&bytes).map(|_| ()).unwrap_err();
    assert!(e.contains("head_count") && e.contains("must be positive"), "{e}");
}

#[test]
fn truncated_and_corrupted_files_are_errors_not_panics() {
    let bytes = std::fs::read(gguf("mixtral-q8_0")).unwrap();
    // Truncated anywhere: an error naming the file's problem.
    for cut in (0..bytes.len()).step_by(97).chain([4, 8, 16, 24, bytes.len() - 1]) {
        let e = load_bytes(&bytes[..cut]).map(|_| ()).unwrap_err();
        assert!(e.contains("m.gguf"), "cut at {cut}: {e}");
    }
    // Random bytes of the header and directory overwritten: Ok or an error, never a panic.
    let dir_end = type_offset(&bytes, "output.weight") + 12;
    let mut rng = moe_engine::rng::Rng::new(7);
    let mut errors = 0;
    for _ in 0..400 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(dir_end);
            b[at] = rng.below(256) as u8;
        }
        let r = std::panic::catch_unwind(|| load_bytes(&b));
        assert!(r.is_ok(), "a corrupted file made the loader panic");
        errors += usize::from(r.unwrap().is_err());
    }
    assert!(errors > 100, "only {errors} of 400 corruptions were noticed");
    // Dimensions whose element count fits in u64 but whose bytes do not (found by the
    // gguf_load fuzz target): an error, not an overflow.
    let mut b = bytes.clone();
    let at = type_offset(&b, "blk.0.ffn_up_exps.weight");
    let dim = |b: &[u8], i: usize| u64::from_le_bytes(b[at - 24 + 8 * i..at - 16 + 8 * i].try_into().unwrap());
    let huge = u64::MAX / (dim(&b, 0) * dim(&b, 1));
    b[at - 8..at].copy_from_slice(&huge.to_le_bytes());
    let e = load_bytes(&b).map(|_| ()).unwrap_err();
    assert!(e.contains("overflow"), "{e}");
    let e = load_bytes(b"GGUF\x07\0\0\0").map(|_| ()).unwrap_err();
    assert!(e.contains("version 7"), "{e}");
    let e = load_bytes(b"NOPE and more bytes").map(|_| ()).unwrap_err();
    assert!(e.contains("GGUF") || e.contains("config.json"), "{e}");
}

#[test]
fn k_quant_files_decode_as_llama_cpp_does_and_run_like_their_float_twin() {
    // Q4_K_M and Q5_K_M files written by llama-quantize; the first two rows of each k-quant
    // tensor as gguf-py's reference dequantiser decodes them.
    let bytes = std::fs::read(fixtures().join("gguf/kquant_rows.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (key, view) in st.tensors() {
        let (kind, gguf_name) = key.split_once('/').unwrap();
        let m = Model::load(&gguf(&format!("mixtral256-{}", kind.to_lowercase()))).unwrap();
        let (name, _) = moe_infer::gguf_model::hf_name("llama", gguf_name).unwrap();
        let e = &m.store.entries[&name];
        let w = m.store.weight(&name, &e.shape).unwrap();
        seen.insert(e.dtype.clone());
        let want: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let x: Vec<f32> = (0..w.cols).map(|j| ((j * 7) % 13) as f32 / 13.0 - 0.5).collect();
        for (r, want) in want.chunks_exact(w.cols).enumerate() {
            let mut got = vec![0.0; w.cols];
            w.row_f32(r, &mut got);
            assert!(max_diff(&got, want) == 0.0, "{key} row {r}: decoded values differ from gguf-py's");
            let dot: f32 = want.iter().zip(&x).map(|(a, b)| a * b).sum();
            let scale: f32 = want.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
            assert!((w.dot_row(r, &x) - dot).abs() <= 1e-5 * scale.max(1e-6), "{key} row {r}: dot product");
        }
    }
    let want: std::collections::BTreeSet<String> = ["Q4_K", "Q5_K", "Q6_K"].map(String::from).into();
    assert!(want.is_subset(&seen), "k-quant types in the fixtures: {seen:?}");
    for file in ["mixtral256-q4_k_m", "mixtral256-q5_k_m"] {
        // a step of more than 64 rows: the int8 GEMM (close) or f32 panels (the float twin's logits)
        let (diff, scale) = float_twin_diff_panels(file);
        let tol = if moe_infer::qgemm::BUILT { 0.05 } else { 1e-4 };
        assert!(diff < tol * scale, "{file}: differs from its float twin by {diff} in a step of many rows");
        // a few rows take dot products in place, with the activations quantised to Q8_0 for
        // the Q6_K tensors: close, not equal (as the Q8_0 and Q4_0 files)
        let (diff, scale) = float_twin_diff(file);
        assert!(diff < 0.05 * scale, "{file}: differs from its float twin by {diff} in place");
    }
}

/// Inputs the `gguf_load` fuzz target found slow (tests/fixtures/fuzz/): one named a block count
/// of about 2^40, and opening the file named that many layers before anything checked it. Each
/// now loads or fails at once; a thread bounds the wait so a regression fails instead of hanging.
#[test]
fn fuzz_found_slow_files_load_or_fail_at_once() {
    for name in ["gguf-huge-block-count.gguf", "gguf-slow-unit.gguf"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz").join(name);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let loaded = Model::load(&path).map(|m| m.forward(&[0, 1], &mut Cache::new(&m.spec), false).is_ok());
            let _ = tx.send(loaded.is_ok());
        });
        let done = rx.recv_timeout(std::time::Duration::from_secs(60));
        assert!(done.is_ok(), "{name}: still loading after 60 s");
    }
}
