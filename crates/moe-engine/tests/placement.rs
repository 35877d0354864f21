//! Load-balanced expert placement: on skewed loads it lowers the heaviest rank's load, with
//! and without redundant replicas; every placement hosts every expert, fills every rank
//! evenly and keeps an expert's replicas on different ranks.

use moe_engine::dist::placement::{balance, max_over_mean, Placement};

fn zipf(e: usize, s: f64) -> Vec<f64> {
    (0..e).map(|i| 1000.0 / ((i + 1) as f64).powf(s)).collect()
}

fn check_valid(p: &Placement, e: usize, ranks: usize) {
    let per = p.ranks[0].len();
    assert!(p.ranks.iter().all(|r| r.len() == per), "uneven slots: {:?}", p.ranks);
    assert_eq!(p.ranks.len(), ranks);
    for x in 0..e {
        let hosts = p.ranks.iter().filter(|r| r.contains(&x)).count();
        let copies: usize = p.ranks.iter().map(|r| r.iter().filter(|&&y| y == x).count()).sum();
        assert_eq!(copies, p.replicas[x], "expert {x}");
        assert_eq!(hosts, copies, "expert {x}: two replicas on one rank");
    }
}

#[test]
fn balancing_lowers_the_heaviest_rank_on_skewed_loads() {
    let load = zipf(16, 1.2);
    let base = max_over_mean(&Placement::contiguous(16, 4).unwrap().rank_loads(&load));
    let moved = balance(&load, 4, 0).unwrap();
    check_valid(&moved, 16, 4);
    let moved_mm = max_over_mean(&moved.rank_loads(&load));
    let replicated = balance(&load, 4, 4).unwrap();
    check_valid(&replicated, 16, 4);
    let replicated_mm = max_over_mean(&replicated.rank_loads(&load));
    assert!(base > 2.0, "the workload should be skewed: {base}");
    assert!(moved_mm < base * 0.7, "moving experts: {moved_mm} vs {base}");
    assert!(replicated_mm < moved_mm, "replicas should help further: {replicated_mm} vs {moved_mm}");
    assert!(replicated.replicas[0] > 1, "the hottest expert gets a replica");
    // Conservation: the ranks carry all the tokens.
    let total: f64 = load.iter().sum();
    assert!((replicated.rank_loads(&load).iter().sum::<f64>() - total).abs() < 1e-9);
}

#[test]
fn equal_loads_stay_balanced_and_bad_shapes_are_refused() {
    let load = vec![5.0; 8];
    assert_eq!(max_over_mean(&balance(&load, 4, 0).unwrap().rank_loads(&load)), 1.0);
    assert_eq!(max_over_mean(&Placement::contiguous(8, 2).unwrap().rank_loads(&load)), 1.0);
    let e = balance(&zipf(10, 1.0), 4, 0).unwrap_err().to_string();
    assert!(e.contains("redundant"), "{e}");
    assert!(Placement::contiguous(10, 4).is_err());
}

/// `first_hosts` gives each expert's first host as `hosts` finds it, with replicas, in one pass.
#[test]
fn first_hosts_are_the_hosts_first() {
    let p = balance(&zipf(16, 1.2), 4, 4).unwrap();
    let first = p.first_hosts();
    for (x, f) in first.iter().enumerate() {
        assert_eq!(*f, p.hosts(x).first().copied(), "expert {x}");
    }
}

/// A valid config of 97,777 tiny experts (found slow by the config_json fuzz target: placing
/// the experts was quadratic, 11 s) builds its model at once; a thread bounds the wait so a
/// regression fails instead of hanging.
#[test]
fn a_model_of_many_experts_builds_at_once() {
    use moe_engine::config::ModelConfig;
    let cfg = ModelConfig { num_local_experts: 97_777, moe_intermediate_size: 4, ..ModelConfig::tiny() };
    cfg.validate().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(moe_engine::model::Model::<f32>::new(cfg).map(|m| m.layout.total));
    });
    let built = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("still building after 30 s");
    assert!(built.unwrap() > 97_777, "the experts' parameters are laid out");
}
