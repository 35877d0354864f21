//! Expert placement across ranks, balanced for a measured load (the idea of DeepSeek's EPLB):
//! the hottest experts get extra replicas in `redundant` spare slots (a replica takes an equal
//! share of its expert's tokens), then replicas are packed heaviest first onto the least
//! loaded rank with a free slot, keeping replicas of one expert on different ranks where it
//! can. The default placement is contiguous: rank r holds experts [r*E/P, (r+1)*E/P).
//! A `Shard` is one rank's view: its rank and the placement of every MoE layer.

use crate::error::{Error, Result};
use std::sync::Arc;

/// Which experts a rank holds: its place in the job and the placement of every MoE layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Shard {
    pub rank: usize,
    pub ranks: usize,
    /// One placement per MoE layer, in layer order; None: contiguous in every layer.
    pub placements: Option<Arc<Vec<Placement>>>,
}

impl Shard {
    /// Everything on one rank.
    pub fn single() -> Shard {
        Shard::contiguous(0, 1)
    }

    /// Rank `rank` of `ranks` with contiguous placements.
    pub fn contiguous(rank: usize, ranks: usize) -> Shard {
        Shard { rank, ranks, placements: None }
    }

    /// The placement of MoE layer `moe_layer` (E experts; E divisible by the ranks when
    /// contiguous, which `Model::sharded` checks).
    pub fn placement(&self, moe_layer: usize, e: usize) -> Placement {
        match &self.placements {
            Some(p) => p[moe_layer].clone(),
            None => {
                let per = e / self.ranks;
                let ranks = (0..self.ranks).map(|r| (r * per..(r + 1) * per).collect()).collect();
                Placement { ranks, replicas: vec![1; e] }
            }
        }
    }

    /// Slots per rank in every MoE layer (E/P, or (E + redundant)/P).
    pub fn slots_per_rank(&self, e: usize) -> usize {
        self.placements.as_ref().and_then(|p| p.first()).map_or(e / self.ranks, |p| p.ranks[0].len())
    }

    /// Checks the placements against the model: one per MoE layer, over the job's ranks, the
    /// same slot count everywhere, every expert hosted.
    pub fn validate(&self, moe_layers: usize, e: usize) -> Result<()> {
        if self.placements.is_none() && !e.is_multiple_of(self.ranks) {
            return Err(Error::config(
                format!("{e} experts cannot be split evenly over {} ranks", self.ranks),
                "use a rank count that divides the number of experts",
            ));
        }
        let Some(ps) = &self.placements else { return Ok(()) };
        let bad = |what: String| Err(Error::config(what, "report this as a bug"));
        if ps.len() != moe_layers {
            return bad(format!("{} placements for {moe_layers} MoE layers", ps.len()));
        }
        let slots = self.slots_per_rank(e);
        for (l, p) in ps.iter().enumerate() {
            let hosted = |x: usize| p.ranks.iter().flatten().filter(|&&y| y == x).count();
            if p.ranks.len() != self.ranks
                || p.ranks.iter().any(|r| r.len() != slots || r.iter().any(|&x| x >= e))
                || p.replicas.len() != e
                || (0..e).any(|x| p.replicas[x] == 0 || hosted(x) != p.replicas[x])
            {
                return bad(format!("the placement of MoE layer {l} does not fit {e} experts on {} ranks", self.ranks));
            }
        }
        Ok(())
    }
}

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

    /// The (rank, slot) of every replica of expert `x`, in rank order.
    pub fn hosts(&self, x: usize) -> Vec<(usize, usize)> {
        let mut v = vec![];
        for (r, slots) in self.ranks.iter().enumerate() {
            v.extend(slots.iter().enumerate().filter(|(_, &y)| y == x).map(|(j, _)| (r, j)));
        }
        v
    }

    /// The first host (rank, slot) of every expert, in one pass over the slots (`hosts(x)[0]`
    /// for each x, which took E passes: 11 s for 97,777 experts); None for an expert nobody hosts.
    pub fn first_hosts(&self) -> Vec<Option<(usize, usize)>> {
        let mut first = vec![None; self.replicas.len()];
        for (r, slots) in self.ranks.iter().enumerate() {
            for (j, &x) in slots.iter().enumerate() {
                first[x].get_or_insert((r, j));
            }
        }
        first
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
