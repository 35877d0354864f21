//! A memory budget for the experts (`--max-memory`). Every weight is memory-mapped; the shared
//! weights stay resident, and of the experts only a budget's worth do: before an MoE layer runs,
//! its routed experts are fetched (an expert not resident is read from the file: a miss, its
//! bytes counted as read), and beyond the budget the least frequently used experts are released
//! (fewest uses so far, the least recent among equals; their pages are dropped from the process
//! and the page cache, so their next use reads the file again). Frequency, not recency: layers
//! run in a cycle, and when the experts of one token do not all fit, least-recently-used
//! eviction always drops the expert needed soonest (a hit rate of zero, measured), while
//! frequency keeps a stable set resident and favours the experts the router prefers. A layer
//! whose routed experts exceed the budget (a long prompt) runs them in groups that fit, each
//! group fetched when its turn comes, so the earlier groups can be released. Prefetch:
//! while a layer runs, the next MoE layer's router is applied to the same hidden state, and the
//! experts it picks that are not resident are requested from the kernel ahead of need.

use crate::load::{FfnW, Weights};

/// What the cache did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheStats {
    /// Uses of an expert that was resident / had to be read.
    pub hits: u64,
    pub misses: u64,
    /// Bytes of experts read from the file (misses).
    pub bytes_read: u64,
    /// Experts released to stay within the budget.
    pub evictions: u64,
    /// Experts requested ahead, and of those, used by the layer they were predicted for.
    pub prefetched: u64,
    pub prefetch_used: u64,
    /// Largest resident expert bytes (above the budget only when one expert alone exceeds it).
    pub peak_bytes: u64,
}

impl CacheStats {
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / (self.hits + self.misses).max(1) as f64
    }
}

pub struct ExpertCache {
    /// Bytes the resident experts may take.
    pub budget: u64,
    /// [MoE layer][expert] bytes, the tick of the last use (0 = not resident), and uses so far.
    size: Vec<Vec<u64>>,
    last: Vec<Vec<u64>>,
    uses: Vec<Vec<u64>>,
    /// [MoE layer][expert] requested ahead and not used yet.
    ahead: Vec<Vec<bool>>,
    tick: u64,
    resident: u64,
    pub stats: CacheStats,
}

/// The routed experts of each MoE layer, in layer order.
fn moe_layers(w: &Weights) -> impl Iterator<Item = &crate::load::MoeW> {
    w.layers.iter().filter_map(|l| match &l.ffn {
        FfnW::Moe(m) => Some(&**m),
        FfnW::Dense(_) => None,
    })
}

impl ExpertCache {
    /// A cache of `budget` bytes over the experts of `w`; every expert starts released.
    pub fn new(w: &Weights, budget: u64) -> ExpertCache {
        let size: Vec<Vec<u64>> = moe_layers(w)
            .map(|m| {
                m.experts
                    .iter()
                    .map(|e| e.as_ref().map_or(0, |e| e.weights().iter().map(|x| x.bytes() as u64).sum()))
                    .collect()
            })
            .collect();
        for m in moe_layers(w) {
            m.experts.iter().flatten().flat_map(|e| e.weights()).for_each(|x| x.advise(true));
        }
        let zeros = |v: &Vec<Vec<u64>>| v.iter().map(|l| vec![0; l.len()]).collect();
        ExpertCache {
            budget,
            last: zeros(&size),
            uses: zeros(&size),
            ahead: size.iter().map(|l| vec![false; l.len()]).collect(),
            size,
            tick: 0,
            resident: 0,
            stats: CacheStats::default(),
        }
    }

    /// Bytes of every expert.
    pub fn expert_bytes(&self) -> u64 {
        self.size.iter().flatten().sum()
    }

    /// The experts `used` of MoE layer `l` in groups that each fit the budget (one expert alone
    /// when it does not), so a layer whose routed experts exceed the budget (a prompt routes
    /// many) runs group by group, and resident memory never holds more than a group beyond
    /// what is already resident within the budget.
    pub fn groups(&self, l: usize, used: &[usize]) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = vec![];
        let mut bytes = 0;
        for &e in used {
            let size = self.size[l][e];
            match groups.last_mut() {
                Some(g) if bytes + size <= self.budget => g.push(e),
                _ => {
                    groups.push(vec![e]);
                    bytes = 0;
                }
            }
            bytes += size;
        }
        groups
    }

    /// Makes the experts `used` of MoE layer `l` resident, releasing the least used others
    /// beyond the budget.
    pub fn fetch(&mut self, w: &Weights, l: usize, used: &[usize]) {
        self.tick += 1;
        for &e in used {
            if self.last[l][e] == 0 {
                self.stats.misses += 1;
                self.stats.bytes_read += self.size[l][e];
                self.resident += self.size[l][e];
            } else {
                self.stats.hits += 1;
            }
            if std::mem::take(&mut self.ahead[l][e]) {
                self.stats.prefetch_used += 1;
            }
            self.last[l][e] = self.tick;
            self.uses[l][e] += 1;
        }
        // the group's pages are read when the layer runs, after the releases below
        while self.resident > self.budget {
            // The least frequently (then least recently) used expert not needed now.
            let victim = (0..self.last.len())
                .flat_map(|l| (0..self.last[l].len()).map(move |e| (l, e)))
                .filter(|&(l, e)| self.last[l][e] != 0 && self.last[l][e] != self.tick)
                .min_by_key(|&(l, e)| (self.uses[l][e], self.last[l][e]));
            let Some((vl, ve)) = victim else { break };
            if let Some(ex) = moe_layers(w).nth(vl).and_then(|m| m.experts[ve].as_ref()) {
                ex.weights().iter().for_each(|x| x.advise(true));
            }
            self.last[vl][ve] = 0;
            self.resident -= self.size[vl][ve];
            self.stats.evictions += 1;
        }
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.resident);
    }

    /// Requests the experts `predicted` for MoE layer `l` ahead of need (those not resident).
    pub fn prefetch(&mut self, w: &Weights, l: usize, predicted: &[usize]) {
        let Some(m) = moe_layers(w).nth(l) else { return };
        for &e in predicted {
            if self.last[l][e] == 0 && !self.ahead[l][e] {
                if let Some(ex) = &m.experts[e] {
                    ex.weights().iter().for_each(|x| x.advise(false));
                    self.ahead[l][e] = true;
                    self.stats.prefetched += 1;
                }
            }
        }
    }
}
