//! `moe export`: a trained MoE checkpoint written as a Hugging Face Mixtral checkpoint runs in
//! the inference engine with the training engine's logits (1e-4), and `moe perplexity` scores a
//! text with it; models Mixtral cannot express are refused with the reason.

use moe_engine::config::ModelConfig;
use moe_engine::model::{Acts, KvCache, Model};
use moe_engine::rng::Rng;
use moe_engine::train::{TrainConfig, Trainer};
use std::process::Command;

fn moe(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe")).args(args).output().expect("run moe");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn trained(cfg: ModelConfig, dir: &std::path::Path) -> std::path::PathBuf {
    trained_with(cfg, dir, None)
}

fn trained_with(cfg: ModelConfig, dir: &std::path::Path, tokenizer_json: Option<&[u8]>) -> std::path::PathBuf {
    let tc = TrainConfig { steps: 3, batch_size: 2, seq_len: 16, warmup_steps: 1, lr: 1e-2, ..TrainConfig::default() };
    let mut tr = Trainer::new(cfg, tc, "d".into()).unwrap();
    let mut rng = Rng::new(1);
    let data: Vec<u32> = (0..2000).map(|_| rng.below(200) as u32).collect();
    for _ in 0..3 {
        tr.step(&data).unwrap();
    }
    tr.save(&dir.join("ck"), tokenizer_json).unwrap()
}

#[test]
fn exported_mixtral_gives_the_training_engines_logits() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig { num_local_experts: 4, num_experts_per_tok: 2, norm_topk_prob: true, ..ModelConfig::tiny() };
    let ck = trained(cfg.clone(), dir.path());
    let out = dir.path().join("hf");
    let (code, err) = export(&ck, &out);
    assert_eq!(code, 0, "{err}");
    let ids = [3u32, 17, 5, 99, 42, 7, 120, 1];
    let (got, want) = logits_both(&ck, &out, &ids);
    let diff = max_diff(&got, &want);
    assert!(diff < 1e-4, "exported logits differ by {diff}");
    // Exporting twice into the same directory is refused.
    let (code, err) = export(&ck, &out);
    assert_eq!(code, 1);
    assert!(err.contains("already holds a model"), "{err}");
}

/// `moe export --gguf`: the GGUF file runs in the inference engine with the training engine's
/// logits (queries and keys permuted as llama.cpp's converter does, grouped KV heads), and its
/// embedded tokenizer gives the checkpoint tokenizer's ids.
#[test]
fn exported_gguf_gives_the_training_engines_logits_and_token_ids() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig { num_local_experts: 4, num_experts_per_tok: 2, norm_topk_prob: true, ..ModelConfig::tiny() };
    assert!(cfg.num_key_value_heads < cfg.num_attention_heads);
    let text = "The router sends each token to a few experts; fn main() { let x = 42; } \
                Mixture-of-Experts layers replace the MLP. Attention stays shared. ";
    let corpus: Vec<String> = (0..40).map(|i| format!("{text} item {i}: {}", "abc xyz ".repeat(i % 5))).collect();
    let tok = moe_engine::tokenizer::Tokenizer::train(corpus.iter().map(|s| s.as_str()), cfg.vocab_size).unwrap();
    let tk_path = dir.path().join("tokenizer.json");
    tok.save(&tk_path).unwrap();
    let ck = trained_with(cfg, dir.path(), Some(&std::fs::read(&tk_path).unwrap()));
    let out = dir.path().join("model.gguf");
    let (code, err) = export(&ck, &out);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("GGUF"), "{err}");
    let ids = [3u32, 17, 5, 99, 42, 7, 120, 1, 300, 64];
    let (got, want) = logits_both(&ck, &out, &ids);
    let diff = max_diff(&got, &want);
    assert!(diff < 1e-4, "GGUF logits differ by {diff}");
    let embedded = moe_infer::gguf_tokenizer::load(&out).unwrap();
    for s in [text, "experts 123 <|endoftext|> tail", "  spaces\tand\nnewlines  "] {
        let want = tok.encode(s).unwrap();
        assert_eq!(embedded.encode(s).unwrap(), want, "{s:?}");
        assert_eq!(embedded.decode(&want).unwrap(), tok.decode(&want).unwrap());
    }
    let (code, err) = export(&ck, &out);
    assert_eq!(code, 1);
    assert!(err.contains("exists"), "{err}");
}

/// Shared experts (with and without their gate), dense layers, unnormalised weights and Switch
/// routing are written as Qwen2-MoE and give the training engine's logits, and as GGUF files of
/// llama.cpp's qwen2moe where it holds them (unnormalised weights, every layer MoE); the others
/// and a router with no transformers class are refused with the reason.
#[test]
fn qwen2_moe_forms_give_the_training_engines_logits_and_others_are_refused() {
    use moe_engine::config::RouterKind;
    let dir = tempfile::tempdir().unwrap();
    let experts = |k| ModelConfig { num_local_experts: 4, num_experts_per_tok: k, ..ModelConfig::tiny() };
    let cases = [
        ("shared expert", ModelConfig { shared_expert_intermediate_size: 16, norm_topk_prob: true, ..experts(2) }),
        (
            "gated shared expert, dense first layer",
            ModelConfig {
                shared_expert_intermediate_size: 8,
                shared_expert_gate: true,
                first_k_dense_replace: 1,
                ..experts(2)
            },
        ),
        ("switch", ModelConfig { router: RouterKind::Switch, norm_topk_prob: false, ..experts(1) }),
        (
            "gated shared expert, biases, unnormalised",
            ModelConfig {
                shared_expert_intermediate_size: 8,
                shared_expert_gate: true,
                qkv_bias: true,
                norm_topk_prob: false,
                ..experts(2)
            },
        ),
        (
            "shared expert, unnormalised",
            ModelConfig { shared_expert_intermediate_size: 8, norm_topk_prob: false, ..experts(2) },
        ),
    ];
    let ids = [3u32, 17, 5, 99, 42, 7, 120, 1];
    for (i, (what, cfg)) in cases.into_iter().enumerate() {
        let ck = trained(cfg, &dir.path().join(i.to_string()));
        let out = dir.path().join(format!("hf{i}"));
        let (code, err) = export(&ck, &out);
        assert_eq!(code, 0, "{what}: {err}");
        assert!(err.contains("Qwen2MoeForCausalLM"), "{what}: {err}");
        let (got, want) = logits_both(&ck, &out, &ids);
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-4, "{what}: exported logits differ by {diff}");
        // GGUF: llama.cpp's qwen2moe takes unnormalised weights in every layer
        let gguf = dir.path().join(format!("x{i}.gguf"));
        let (code, err) = export(&ck, &gguf);
        match what {
            "shared expert" => assert!(code == 1 && err.contains("does not renormalise"), "{what}: {err}"),
            "gated shared expert, dense first layer" => assert!(code == 1 && err.contains("dense layers"), "{err}"),
            _ => {
                assert_eq!(code, 0, "{what}: {err}");
                assert!(err.contains("qwen2moe"), "{err}");
                let (got, want) = logits_both(&ck, &gguf, &ids);
                let diff = max_diff(&got, &want);
                assert!(diff < 1e-4, "{what}: GGUF logits differ by {diff}");
            }
        }
    }
    let cfg = ModelConfig { router: RouterKind::ExpertChoice, ..experts(2) };
    let ck = trained(cfg, &dir.path().join("ec"));
    let out = dir.path().join("ec-hf");
    let (code, err) = export(&ck, &out);
    assert_eq!(code, 1);
    assert!(err.contains("ExpertChoice") && err.contains("no transformers class"), "{err}");
}

#[test]
fn perplexity_of_a_text() {
    let f = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/moe-infer/tests/fixtures/mixtral");
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "the router sends each token to a few experts. ".repeat(20)).unwrap();
    let (code, out, err) = moe(&["perplexity", "--model", f, "--text", text.to_str().unwrap(), "--window", "32"]);
    assert_eq!(code, 0, "{err}");
    let ppl: f64 = out.split("perplexity ").nth(1).unwrap().trim().parse().unwrap();
    // A random model over a vocabulary of 128: near-uniform, so near 128.
    assert!(ppl > 20.0 && ppl < 1000.0, "{out}");
    let empty = dir.path().join("e.txt");
    std::fs::write(&empty, "").unwrap();
    let (code, _, err) = moe(&["perplexity", "--model", f, "--text", empty.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("fewer than 2 tokens"), "{err}");
}

/// `moe export --checkpoint ck --out out`: its exit code and stderr.
fn export(ck: &std::path::Path, out: &std::path::Path) -> (i32, String) {
    let (code, _, err) = moe(&["export", "--checkpoint", ck.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    (code, err)
}

/// Trains `cfg` into `dir`, exports it as a Hugging Face directory and checks that it is written
/// as `class` and that the inference engine reads it back with the training engine's logits.
/// Returns the checkpoint.
fn exports_as(cfg: ModelConfig, dir: &std::path::Path, class: &str) -> std::path::PathBuf {
    let ck = trained(cfg, dir);
    let out = dir.join("hf");
    let (code, err) = export(&ck, &out);
    assert!(code == 0 && err.contains(class), "{class}: {err}");
    let (got, want) = logits_both(&ck, &out, &[3u32, 17, 5, 99, 42, 7, 120, 1]);
    let diff = max_diff(&got, &want);
    assert!(diff < 1e-4, "{class}: exported logits differ by {diff}");
    ck
}

/// Each config, trained under `dir`, is refused by `moe export` with an error containing its text.
fn refused(dir: &std::path::Path, cases: Vec<(ModelConfig, &str)>) {
    for (cfg, says) in cases {
        let ck = trained(cfg, &dir.join(says));
        let (code, err) = export(&ck, &dir.join("refused"));
        assert!(code == 1 && err.contains(says), "{says}: {err}");
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Logits of the training engine and of the inference engine on `dir` (a written checkpoint).
fn logits_both(ck: &std::path::Path, dir: &std::path::Path, ids: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let loaded = moe_engine::checkpoint::load(ck).unwrap();
    let model = Model::<f32>::new(loaded.config.clone()).unwrap();
    let mut acts = Acts::new(&model.cfg, 1, ids.len(), ids.len());
    let mut cache = KvCache::new(&model.cfg, 1, ids.len());
    model.forward(&loaded.params, &mut acts, &mut cache, ids, 0);
    let want = acts.logits[..ids.len() * model.cfg.vocab_size].to_vec();
    let inf = moe_infer::Model::load(dir).unwrap();
    (inf.forward(ids, &mut moe_infer::Cache::new(&inf.spec), true).unwrap(), want)
}

#[test]
fn the_default_presets_selection_bias_runs_in_the_inference_engine_and_is_served() {
    // Mixtral's form, and the default preset's (a shared expert: Qwen2-MoE's form); the last is served
    let mixtral = ModelConfig {
        num_local_experts: 4,
        num_experts_per_tok: 2,
        norm_topk_prob: true,
        bias_update_rate: 0.05,
        ..ModelConfig::tiny()
    };
    let shared = ModelConfig { shared_expert_intermediate_size: 8, ..mixtral.clone() };
    let dir = tempfile::tempdir().unwrap();
    let mut ck = std::path::PathBuf::new();
    for (form, cfg) in [("mixtral", mixtral), ("qwen2_moe", shared)] {
        let run = dir.path().join(form);
        ck = trained(cfg, &run);
        let loaded = moe_engine::checkpoint::load(&ck).unwrap();
        assert!(loaded.config.has_selection_bias());
        // HF export refuses it; the inference layout with the bias gives the training engine's logits
        let x = run.join("x");
        let (code, err) = export(&ck, &x);
        assert_eq!(code, 1, "{form}");
        assert!(err.contains("selection bias"), "{form}: {err}");
        let out = run.join("inf");
        moe_infer::from_moe::write_hf(&loaded, &out, true).unwrap();
        let ids = [3u32, 17, 5, 99, 42, 7, 120, 1, 64, 9, 33, 2];
        let (got, want) = logits_both(&ck, &out, &ids);
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-4, "{form}: logits differ by {diff}");
        // without the bias they would differ: the test sees the bias
        std::fs::remove_dir_all(&out).unwrap();
        let mut plain = moe_engine::checkpoint::load(&ck).unwrap();
        plain.config.bias_update_rate = 0.0;
        let layout = moe_engine::params::Layout::new(&loaded.config);
        let mut params = vec![];
        for t in &layout.tensors {
            if !t.name.ends_with("selection_bias") {
                params.extend_from_slice(t.span.of(&loaded.params));
            }
        }
        plain.params = params;
        moe_infer::from_moe::write_hf(&plain, &out, false).unwrap();
        let (unbiased, _) = logits_both(&ck, &out, &ids);
        let off = unbiased.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(off > 1e-3, "{form}: the selection bias changed no routing ({off}); the test needs a stronger bias");
    }

    // moe serve --checkpoint answers over loopback on the default preset's form (with a
    // tokenizer: these test runs train on raw ids)
    let tk = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/moe-infer/tests/fixtures/mixtral/tokenizer.json");
    std::fs::copy(tk, ck.join("tokenizer.json")).unwrap();
    let mut srv = std::process::Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(["serve", "--checkpoint", ck.to_str().unwrap(), "--port", "0", "--alias", "ours"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(srv.stderr.take().unwrap()));
    let mut said = vec![];
    let addr = loop {
        let l = lines.next().unwrap_or_else(|| panic!("no address; the server said {said:?}")).unwrap();
        said.push(l.clone());
        if let Some(rest) = l.split("http://").nth(1) {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    let body = r#"{"model": "ours", "prompt": [3, 17, 5], "max_tokens": 5, "temperature": 0, "ignore_eos": true}"#;
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    srv.kill().unwrap();
    let _ = srv.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"completion_tokens\":5"), "{answer}");
}

/// Query/key norms: over the whole projections, every layer MoE -> OLMoE; per head, with wide
/// heads and a dense first layer -> Qwen3-MoE; Granite's multipliers -> GraniteMoE (experts
/// fused as the hub holds them). Each gives the training engine's logits in the inference
/// engine, and so do their GGUF files (llama.cpp's granitemoe, olmoe and qwen3moe); what those
/// cannot hold is refused with the reason.
#[test]
fn olmoe_qwen3_moe_and_granite_forms_give_the_training_engines_logits() {
    use moe_engine::config::QkNorm;
    let dir = tempfile::tempdir().unwrap();
    let experts = ModelConfig { num_local_experts: 4, num_experts_per_tok: 2, ..ModelConfig::tiny() };
    let granite = ModelConfig {
        embedding_multiplier: 2.0,
        attention_multiplier: 0.3,
        residual_multiplier: 0.5,
        logits_scaling: 4.0,
        router: moe_engine::config::RouterKind::TopkSoftmax,
        ..experts.clone()
    };
    let cases = [
        ("GraniteMoeForCausalLM", granite.clone()),
        (
            "OlmoeForCausalLM",
            ModelConfig { qk_norm: QkNorm::Whole, norm_topk_prob: false, num_key_value_heads: 4, ..experts.clone() },
        ),
        ("Qwen3MoeForCausalLM", ModelConfig { qk_norm: QkNorm::PerHead, head_dim: 8, ..experts.clone() }),
    ];
    let ids = [3u32, 17, 5, 99, 42, 7, 120, 1];
    for (i, (class, cfg)) in cases.into_iter().enumerate() {
        let ck = trained(cfg, &dir.path().join(i.to_string()));
        let out = dir.path().join(format!("hf{i}"));
        let (code, err) = export(&ck, &out);
        assert_eq!(code, 0, "{class}: {err}");
        assert!(err.contains(class), "{err}");
        let (got, want) = logits_both(&ck, &out, &ids);
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-4, "{class}: exported logits differ by {diff}");
        let gguf = dir.path().join(format!("x{i}.gguf"));
        let (code, err) = export(&ck, &gguf);
        // GraniteMoE as llama.cpp's granitemoe, OLMoE as olmoe, Qwen3-MoE (every layer MoE) as qwen3moe
        assert_eq!(code, 0, "{class}: {err}");
        let (got, want) = logits_both(&ck, &gguf, &ids);
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-4, "{class}: GGUF logits differ by {diff}");
    }
    let wide = ModelConfig { head_dim: 8, ..granite };
    let ck = trained(wide, &dir.path().join("wide"));
    let (code, err) = export(&ck, &dir.path().join("wide.gguf"));
    assert!(code == 1 && err.contains("granitemoe assumes"), "{err}");
    // what llama.cpp's olmoe and qwen3moe cannot hold is refused with the reason
    for (cfg, says) in [
        (ModelConfig { qk_norm: QkNorm::Whole, norm_topk_prob: true, ..experts.clone() }, "does not renormalise"),
        (ModelConfig { qk_norm: QkNorm::Whole, norm_topk_prob: false, ..experts.clone() }, "grouped-query"),
        (ModelConfig { qk_norm: QkNorm::PerHead, first_k_dense_replace: 1, ..experts.clone() }, "dense layers"),
        (ModelConfig { qk_norm: QkNorm::PerHead, norm_topk_prob: false, ..experts.clone() }, "renormalises"),
    ] {
        let ck = trained(cfg, &dir.path().join(says));
        let gguf = dir.path().join("refused.gguf");
        let (code, err) = export(&ck, &gguf);
        assert!(code == 1 && err.contains(says), "{says}: {err}");
    }
}

/// Dense models (a merged LoRA fine-tune of a Llama or Qwen2): written as LlamaForCausalLM, or
/// Qwen2ForCausalLM with query/key/value biases; read back by `moe train --init`'s reader they
/// are exactly the checkpoint (transformers' logits on such exports, the fixtures
/// moe_export_llama and moe_export_qwen2_dense, are checked in crates/moe-infer/tests/hf_train.rs).
/// GGUF is refused with the reason.
#[test]
fn dense_models_export_as_llama_and_qwen2() {
    let dir = tempfile::tempdir().unwrap();
    let dense =
        ModelConfig { num_local_experts: 0, num_experts_per_tok: 0, moe_intermediate_size: 0, ..ModelConfig::tiny() };
    for (i, (class, cfg)) in
        [("LlamaForCausalLM", dense.clone()), ("Qwen2ForCausalLM", ModelConfig { qkv_bias: true, ..dense })]
            .into_iter()
            .enumerate()
    {
        let ck = trained(cfg.clone(), &dir.path().join(i.to_string()));
        let out = dir.path().join(format!("hf{i}"));
        let (code, err) = export(&ck, &out);
        assert_eq!(code, 0, "{class}: {err}");
        assert!(err.contains(class), "{err}");
        let back = moe_infer::hf_train::read_checkpoint(&out).unwrap();
        let orig = moe_engine::checkpoint::load(&ck).unwrap();
        assert_eq!(back.config.qkv_bias, cfg.qkv_bias, "{class}");
        assert!(back.params == orig.params, "{class}: the export does not read back as the checkpoint");
        let gguf = dir.path().join(format!("x{i}.gguf"));
        let (code, err) = export(&ck, &gguf);
        assert!(code == 1 && err.contains("dense models are not written as GGUF yet"), "{err}");
    }
}

/// Latent attention with the sigmoid group-limited router, shared experts and a dense first
/// layer (a DeepSeek-V3 fine-tune): written as DeepseekV3ForCausalLM (its trained selection bias
/// as the score correction bias), read back by the inference engine with the training engine's
/// logits, also with YaRN and the attention scale DeepSeek derives from it; a Mixtral with Llama
/// 3's RoPE scaling keeps it (transformers loads these too: scripts/export_check.py, by hand).
/// What the form cannot hold, and GGUF files of scaled RoPE or this form, are refused.
#[test]
fn deepseek_v3_form_and_scaled_rope_give_the_training_engines_logits() {
    use moe_engine::config::{MlaConfig, RouterKind};
    let dir = tempfile::tempdir().unwrap();
    let mla = MlaConfig {
        q_lora_rank: 6,
        kv_lora_rank: 8,
        qk_nope_head_dim: 4,
        qk_rope_head_dim: 4,
        v_head_dim: 6,
        rope_interleave: true,
    };
    let deepseek = ModelConfig {
        num_hidden_layers: 3,
        first_k_dense_replace: 1,
        num_key_value_heads: 4,
        router: RouterKind::SigmoidGroup,
        n_group: 2,
        topk_group: 1,
        routed_scaling_factor: 1.5,
        shared_expert_intermediate_size: 24,
        bias_update_rate: 0.01,
        mla: Some(mla),
        ..ModelConfig::tiny()
    };
    let ck = exports_as(deepseek.clone(), &dir.path().join("ds"), "DeepseekV3ForCausalLM");
    let loaded = moe_engine::checkpoint::load(&ck).unwrap();
    let layout = moe_engine::params::Layout::new(&loaded.config);
    let mut biases = layout.tensors.iter().filter(|t| t.name.ends_with("selection_bias"));
    assert!(biases.any(|t| t.span.of(&loaded.params).iter().any(|&b| b != 0.0)), "training moved the selection bias");
    deepseek_gguf(&ck, &dir.path().join("x.gguf"));
    // trained with RoPE over halves: the GGUF file's rotary rows are permuted for llama.cpp's pairs
    let halves = ModelConfig { mla: Some(MlaConfig { rope_interleave: false, ..mla }), ..deepseek.clone() };
    let ck = exports_as(halves, &dir.path().join("halves"), "DeepseekV3ForCausalLM");
    deepseek_gguf(&ck, &dir.path().join("halves.gguf"));
    // without a query rank: the inference engine reads it, llama.cpp would not (V2-Lite's layer counts only)
    let plain_q = ModelConfig { mla: Some(MlaConfig { q_lora_rank: 0, ..mla }), ..deepseek.clone() };
    let ck = exports_as(plain_q, &dir.path().join("plain_q"), "DeepseekV3ForCausalLM");
    let (code, err) = export(&ck, &dir.path().join("plain_q.gguf"));
    assert!(code == 1 && err.contains("no query rank"), "{err}");
    let yarn = serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4,
        "mscale": 0.7, "mscale_all_dim": 0.7});
    let theta = serde_json::json!({"rope_theta": deepseek.rope_theta, "rope_type": "yarn", "factor": 4.0,
        "mscale_all_dim": 0.7});
    let scale = moe_engine::rope::deepseek_attention_scale(deepseek.attn_shape().d, Some(&theta));
    let llama3 = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 4});
    let yarn_ds = ModelConfig { rope_scaling: Some(yarn), attention_multiplier: scale, ..deepseek.clone() };
    let llama3_mixtral = ModelConfig { rope_scaling: Some(llama3), ..ModelConfig::tiny() };
    for (i, (cfg, class)) in
        [(yarn_ds, "DeepseekV3ForCausalLM"), (llama3_mixtral, "MixtralForCausalLM")].into_iter().enumerate()
    {
        let ck = exports_as(cfg, &dir.path().join(format!("scaled{i}")), class);
        let gguf = dir.path().join(format!("scaled{i}.gguf"));
        if class == "DeepseekV3ForCausalLM" {
            deepseek_gguf(&ck, &gguf); // llama.cpp's deepseek2 holds YaRN
        } else {
            let (code, err) = export(&ck, &gguf);
            assert!(code == 1 && err.contains("RoPE scaling is not written as GGUF"), "{err}");
        }
    }
    let two_mscales = serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4,
        "mscale": 1.0, "mscale_all_dim": 0.7});
    let theta = serde_json::json!({"rope_theta": deepseek.rope_theta, "rope_type": "yarn", "factor": 4.0,
        "mscale": 1.0, "mscale_all_dim": 0.7});
    let scale = moe_engine::rope::deepseek_attention_scale(deepseek.attn_shape().d, Some(&theta));
    let cfg = ModelConfig { rope_scaling: Some(two_mscales), attention_multiplier: scale, ..deepseek.clone() };
    let ck = exports_as(cfg, &dir.path().join("mscales"), "DeepseekV3ForCausalLM");
    let (code, err) = export(&ck, &dir.path().join("mscales.gguf"));
    assert!(code == 1 && err.contains("keeps one YaRN mscale"), "{err}");
    let softmax = ModelConfig { router: RouterKind::SoftmaxTopk, n_group: 1, topk_group: 1, ..deepseek.clone() };
    refused(
        dir.path(),
        vec![
            (softmax, "latent attention is exported only"),
            (ModelConfig { mla: None, ..deepseek.clone() }, "which has latent attention"),
            (ModelConfig { shared_expert_intermediate_size: 0, ..deepseek.clone() }, "shared experts"),
            (ModelConfig { attention_multiplier: 0.5, ..deepseek }, "attention scale"),
        ],
    );
}

/// `moe export --gguf` of a DeepSeek-V3-form checkpoint: written as `deepseek2`, with
/// llama.cpp's split of kv_b_proj, and read back by the inference engine with the training
/// engine's logits.
fn deepseek_gguf(ck: &std::path::Path, gguf: &std::path::Path) {
    let (code, err) = export(ck, gguf);
    assert!(code == 0 && err.contains("deepseek2"), "{err}");
    let g = std::fs::read(gguf).unwrap();
    let has = |name: &str| g.windows(name.len()).any(|w| w == name.as_bytes());
    assert!(has("blk.1.attn_k_b.weight") && has("blk.1.attn_v_b.weight") && !has("attn_kv_b"), "kv_b_proj split");
    assert!(has("blk.1.exp_probs_b.bias"), "the selection bias under llama.cpp's name");
    let (got, want) = logits_both(ck, gguf, &[3u32, 17, 5, 99, 42, 7, 120, 1]);
    let diff = max_diff(&got, &want);
    assert!(diff < 1e-4, "deepseek2 GGUF logits differ by {diff}");
}

/// gpt-oss's blocks (sinks, alternating sliding windows, biases on every projection, router and
/// expert, the clamped SwiGLU): written as GptOssForCausalLM (experts fused and stored [in, out]
/// as the hub holds them); a Mixtral with a sliding window in every layer keeps it; PhiMoE's
/// blocks (the sparsemixer, LayerNorms, biases on attention and the LM head) as
/// PhimoeForCausalLM; OLMoE's clip_qkv and Qwen2-MoE's dense layers between MoE ones travel in
/// config.json. Each is read back by the inference engine with the training engine's logits
/// (transformers too: scripts/export_check.py, by hand); partial or mixed forms and their GGUF
/// files are refused.
#[test]
fn gpt_oss_phimoe_windows_clip_and_dense_layers_give_the_training_engines_logits() {
    use moe_engine::config::{LayerType, QkNorm, RouterKind};
    let dir = tempfile::tempdir().unwrap();
    let gpt_oss = ModelConfig {
        num_hidden_layers: 3,
        sliding_window: 3,
        layer_types: vec![LayerType::SlidingAttention, LayerType::FullAttention, LayerType::SlidingAttention],
        attention_sinks: true,
        o_proj_bias: true,
        qkv_bias: true,
        expert_bias: true,
        swiglu_limit: 0.9,
        router: RouterKind::TopkSoftmax,
        router_bias: true,
        ..ModelConfig::tiny()
    };
    let phimoe = ModelConfig {
        router: RouterKind::SparseMixer,
        sparse_mixer_eps: 0.3,
        layer_norm: true,
        lm_head_bias: true,
        qkv_bias: true,
        o_proj_bias: true,
        ..ModelConfig::tiny()
    };
    let experts = ModelConfig { num_hidden_layers: 3, num_key_value_heads: 4, ..ModelConfig::tiny() };
    let olmoe = ModelConfig { qk_norm: QkNorm::Whole, norm_topk_prob: false, clip_qkv: 0.05, ..experts.clone() };
    let qwen2 = ModelConfig { shared_expert_intermediate_size: 8, mlp_only_layers: vec![1], ..experts.clone() };
    let cases = [
        (gpt_oss.clone(), "GptOssForCausalLM"),
        (ModelConfig { sliding_window: 3, ..ModelConfig::tiny() }, "MixtralForCausalLM"),
        (phimoe.clone(), "PhimoeForCausalLM"),
        (olmoe.clone(), "OlmoeForCausalLM"),
        (qwen2, "Qwen2MoeForCausalLM"),
    ];
    for (i, (cfg, class)) in cases.into_iter().enumerate() {
        let ck = exports_as(cfg, &dir.path().join(i.to_string()), class);
        let (code, err) = export(&ck, &dir.path().join(format!("x{i}.gguf")));
        // (Qwen2-MoE's dense layers are refused by llama.cpp's qwen2moe form, with its reason)
        let says = if class == "Qwen2MoeForCausalLM" { "dense layers" } else { "GGUF" };
        assert!(code == 1 && err.contains(says), "{class}: {err}");
    }
    let partial = ModelConfig {
        attention_sinks: false,
        o_proj_bias: false,
        expert_bias: false,
        swiglu_limit: 0.0,
        ..gpt_oss.clone()
    };
    refused(
        dir.path(),
        vec![
            (ModelConfig { expert_bias: false, ..gpt_oss.clone() }, "needs all of its blocks"),
            (ModelConfig { shared_expert_intermediate_size: 8, ..gpt_oss }, "no shared expert"),
            (partial, "some layers only"),
            (ModelConfig { layer_norm: false, ..phimoe.clone() }, "PhiMoE's form needs all of its blocks"),
            (ModelConfig { shared_expert_intermediate_size: 8, ..phimoe }, "PhiMoE has no shared expert"),
            (ModelConfig { clip_qkv: 0.5, ..experts }, "OLMoE's form alone"),
        ],
    );
}
