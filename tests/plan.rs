//! `moe plan` against hand computation for two published models (see docs/distributed.md, "Planning"):
//! Mixtral-8x7B and DeepSeek-V3 parameter counts, whole-model memory, and the fewest 80 GB
//! devices for bf16 inference; and the planner's count of a preset equals `moe inspect`'s.

use moe_engine::config::ModelConfig;
use moe_engine::inspect::sizes;
use moe_engine::plan::PlanModel;
use std::process::Command;

fn plan(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_moe")).arg("plan").args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn mixtral_8x7b_matches_hand_computation() {
    // Per layer: attention 2*4096*4096 + 2*4096*1024 = 41.94 M, experts 8 * 3*4096*14336 =
    // 1409.29 M, router 32.8 k, norms 8 k; x 32 layers + embeddings 2*32000*4096 = 262.1 M.
    let text = plan(&["mixtral-8x7b"]);
    assert!(text.contains("46.70 B total, 12.88 B active per token, 45.10 B in routed experts"), "{text}");
    // Training: 16 bytes per parameter = 747.2 GB = weights 93.4 + grads 93.4 + optimizer 560.4.
    assert!(text.contains("weights 93.4 GB (bf16) + gradients 93.4 GB + optimizer 560.4 GB"), "{text}");
    // bf16 inference: 93.4 GB > 80 GB; two devices hold 45.10/2 B experts + 1.60 B replicated
    // = 24.15 B parameters = 48.3 GB each.
    assert!(
        text.contains("| inference, fewest devices | 2 = 1 stages x 2 expert-parallel | 32 | 4 | 48.3 GB"),
        "{text}"
    );
}

#[test]
fn deepseek_v3_matches_hand_computation() {
    // MLA attention per layer: q 7168*1536 + 1536 + 1536*128*192, kv 7168*576 + 512 +
    // 512*128*256, o 128*128*7168 = 187.1 M; 3 dense MLPs 3*7168*18432; 58 MoE layers of 256
    // routed experts 3*7168*2048, one shared expert and a router; embeddings 2*129280*7168.
    let text = plan(&["deepseek-v3"]);
    assert!(text.contains("671.03 B total, 37.55 B active per token, 653.91 B in routed experts"), "{text}");
    // bf16 weights 1342.1 GB; the KV cache is the compressed MLA latent: 576 values per token
    // and layer, 61 layers x 4096 tokens x 2 bytes = 0.29 GB.
    assert!(text.contains("inference, whole model: weights 1342.1 GB (2 bytes/weight) + KV cache 0.3 GB"), "{text}");
}

#[test]
fn the_planner_counts_a_preset_as_inspect_does() {
    for name in ["bench-dense", "bench-moe8x2", "default"] {
        let cfg = ModelConfig::preset(name).unwrap();
        let p = PlanModel::from_config(name, &cfg);
        assert_eq!(p.total() as usize, sizes(&cfg, 1, 1).total_params, "{name}");
        // With a router bias and without the selection bias as well.
        let other = ModelConfig { router_bias: !cfg.router_bias, bias_update_rate: 0.0, ..cfg };
        let p = PlanModel::from_config(name, &other);
        assert_eq!(p.total() as usize, sizes(&other, 1, 1).total_params, "{name} (other biases)");
    }
    let text = plan(&["bench-moe8x2", "--memory-gb", "0.1", "--devices", "4"]);
    assert!(text.contains("inference, 4 devices"), "{text}");
}
