//! `--max-memory` measured on resident memory: a generated Mixtral-shaped model with 96 MiB of
//! bf16 experts (2 layers x 8 experts of 6 MiB; a few hundred KiB of shared weights) decodes
//! with a 24 MiB weight budget. The child process's peak RSS (VmHWM, which counts the mapped
//! weight pages it touched) must stay within the budget plus one expert (prefetched ahead) above
//! the peak of the same run on a twin whose experts are negligible (F = 16: the binary, the
//! tokenizer, activations); without a budget the same model must exceed that bound, so the test
//! can fail.

use std::path::Path;
use std::process::Command;

const C: usize = 256;
const E: usize = 8;
const L: usize = 2;
const V: usize = 128;

/// Writes config.json, model.safetensors (random bf16, expert width f) and the fixture
/// tokenizer into dir.
fn write_model(dir: &Path, f: usize) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/moe-infer/tests/fixtures/mixtral");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap()).unwrap();
    cfg["hidden_size"] = C.into();
    cfg["intermediate_size"] = f.into();
    cfg["num_local_experts"] = E.into();
    cfg["num_hidden_layers"] = L.into();
    cfg["vocab_size"] = V.into();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();

    let kv = C / 4 * 2; // 2 key/value heads of 4
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![V, C]),
        ("model.norm.weight".into(), vec![C]),
        ("lm_head.weight".into(), vec![V, C]),
    ];
    for l in 0..L {
        let p = format!("model.layers.{l}");
        for (n, s) in [("q_proj", [C, C]), ("k_proj", [kv, C]), ("v_proj", [kv, C]), ("o_proj", [C, C])] {
            shapes.push((format!("{p}.self_attn.{n}.weight"), s.to_vec()));
        }
        shapes.push((format!("{p}.input_layernorm.weight"), vec![C]));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![C]));
        shapes.push((format!("{p}.block_sparse_moe.gate.weight"), vec![E, C]));
        for e in 0..E {
            for (n, s) in [("w1", [f, C]), ("w2", [C, f]), ("w3", [f, C])] {
                shapes.push((format!("{p}.block_sparse_moe.experts.{e}.{n}.weight"), s.to_vec()));
            }
        }
    }
    let mut seed = 1u64;
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(name, s)| {
            let n: usize = s.iter().product();
            let norm = name.ends_with("norm.weight");
            (0..n)
                .flat_map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let v = if norm { 1.0 } else { ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1 };
                    ((v.to_bits() >> 16) as u16).to_le_bytes() // bf16 by truncation
                })
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = shapes
        .iter()
        .zip(&data)
        .map(|((name, s), d)| {
            (name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), d).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Peak RSS in MiB that `moe generate` reports for this model, with an optional budget.
fn peak_rss_mib(dir: &Path, budget: Option<&str>) -> f64 {
    let mut args = vec![
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "the quick brown fox jumps",
        "--max-tokens",
        "16",
        "--temperature",
        "0",
    ];
    if let Some(b) = budget {
        args.extend(["--max-memory", b]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_moe")).args(&args).output().expect("run moe");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "moe generate failed: {err}");
    let line = err.lines().find(|l| l.contains("peak RSS")).unwrap_or_else(|| panic!("no memory report: {err}"));
    let mut it = line.split("peak RSS ").nth(1).unwrap().split([' ', ';']);
    let (v, unit): (f64, &str) = (it.next().unwrap().parse().unwrap(), it.next().unwrap());
    v * match unit {
        "GiB" => 1024.0,
        "MiB" => 1.0,
        _ => 1.0 / 1024.0,
    }
}

#[test]
fn a_weight_budget_bounds_resident_memory() {
    let (base, big) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_model(base.path(), 16);
    write_model(big.path(), 4096);
    let expert_mib = (3 * 4096 * C * 2) as f64 / (1 << 20) as f64;
    let floor = peak_rss_mib(base.path(), None);
    let bound = floor + 24.0 + expert_mib;
    let unlimited = peak_rss_mib(big.path(), None);
    let budgeted = peak_rss_mib(big.path(), Some("24MiB"));
    let msg = format!(
        "peak RSS {floor:.1} MiB without experts, {unlimited:.1} MiB without a budget, {budgeted:.1} MiB with 24 MiB \
         (bound {bound:.1} MiB)"
    );
    eprintln!("{msg}");
    assert!(unlimited > bound, "without a budget the model stays within the bound: the test cannot fail; {msg}");
    assert!(budgeted <= bound, "the budget does not bound resident memory: {msg}");
}
