//! Expert placement across ranks, balanced for a measured load (the idea of DeepSeek's EPLB):
//! the hottest experts get extra replicas in `redundant` spare slots (a replica takes an equal
//! share of its expert's tokens), then replicas are packed heaviest first onto the least
//! loaded rank with a free slot, keeping replicas of one expert on different ranks where it
//! can. The default placement is contiguous: rank r holds experts [r*E/P, (r+1)*E/P).

use crate::error::{Error, Result};

/// Which experts each rank hosts; an expert with several replicas splits its tokens evenly.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// [P][slots per rank] expert ids.
    pub ranks: Vec<Vec<usize>>,
    /// [E] replicas of each expert.
    pub replicas: Vec<usize>,
}

impl Placement {
    /// Rank r holds experts [r*E/P, (r+1)*E/P).
    pub fn contiguous(e: usize, p: usize) -> Result<Placement> {
        if p == 0 || !e.is_multiple_of(p) {
            return Err(Error::config(
                format!("{e} experts cannot be split evenly over {p} ranks"),
                "pick a rank count that divides the experts",
            ));
        }
        let per = e / p;
        Ok(Placement { ranks: (0..p).map(|r| (r * per..(r + 1) * per).collect()).collect(), replicas: vec![1; e] })
    }

    /// Tokens each rank processes for expert loads `load`[E].
    pub fn rank_loads(&self, load: &[f64]) -> Vec<f64> {
        self.ranks.iter().map(|experts| experts.iter().map(|&x| load[x] / self.replicas[x] as f64).sum()).collect()
    }
}

/// max / mean of a load vector (1 = balanced; 0 for no load).
pub fn max_over_mean(v: &[f64]) -> f64 {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    if mean <= 0.0 {
        return 0.0;
    }
    v.iter().cloned().fold(0.0, f64::max) / mean
}

/// A placement of E experts (loads `load`[E]) on `p` ranks with `redundant` extra replicas;
/// E + redundant must be divisible by p.
pub fn balance(load: &[f64], p: usize, redundant: usize) -> Result<Placement> {
    let e = load.len();
    let slots = e + redundant;
    if p == 0 || e == 0 || !slots.is_multiple_of(p) || redundant > e * (p - 1) {
        return Err(Error::config(
            format!("{e} experts plus {redundant} redundant replicas do not fill {p} ranks evenly"),
            "choose --redundant so that experts + redundant is a multiple of the ranks",
        ));
    }
    let per_rank = slots / p;
    let mut replicas = vec![1usize; e];
    for _ in 0..redundant {
        // The expert whose replicas carry the most tokens each, with room for one more rank.
        let hot = (0..e)
            .filter(|&x| replicas[x] < p)
            .max_by(|&a, &b| (load[a] / replicas[a] as f64).total_cmp(&(load[b] / replicas[b] as f64)))
            .unwrap_or(0);
        replicas[hot] += 1;
    }
    let mut items: Vec<(f64, usize)> =
        (0..e).flat_map(|x| std::iter::repeat_n((load[x] / replicas[x] as f64, x), replicas[x])).collect();
    items.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut ranks: Vec<Vec<usize>> = vec![vec![]; p];
    let mut carried = vec![0.0f64; p];
    for (share, x) in items {
        let pick = |avoid_twin: bool| {
            (0..p)
                .filter(|&r| ranks[r].len() < per_rank && !(avoid_twin && ranks[r].contains(&x)))
                .min_by(|&a, &b| carried[a].total_cmp(&carried[b]).then(a.cmp(&b)))
        };
        let Some(r) = pick(true).or_else(|| pick(false)) else {
            return Err(Error::config("no free slot left", "report this as a bug"));
        };
        ranks[r].push(x);
        carried[r] += share;
    }
    Ok(Placement { ranks, replicas })
}
