//! The KV-cache memory cap, counted in fixed-size blocks of positions. A sequence reserves the
//! blocks for its prompt plus its max_tokens when it is admitted (its cache is allocated at
//! that size, see `Cache::with_capacity`) and returns them when it leaves, so the caches never
//! outgrow the cap: what does not fit waits in the queue instead of being killed for memory.

/// Positions per block.
pub const BLOCK: usize = 16;

pub struct KvPool {
    /// Bytes of one block (BLOCK positions in every layer).
    pub block_bytes: u64,
    pub total: usize,
    pub used: usize,
}

impl KvPool {
    /// A pool of `cap_bytes` for a model whose every position takes `bytes_per_token`.
    pub fn new(bytes_per_token: usize, cap_bytes: u64) -> Self {
        let block_bytes = (bytes_per_token * BLOCK).max(1) as u64;
        KvPool { block_bytes, total: (cap_bytes / block_bytes) as usize, used: 0 }
    }

    /// Blocks that hold `tokens` positions.
    pub fn blocks_for(tokens: usize) -> usize {
        tokens.div_ceil(BLOCK)
    }

    /// Takes `blocks` if that many are free.
    pub fn try_take(&mut self, blocks: usize) -> bool {
        let fits = self.used + blocks <= self.total;
        if fits {
            self.used += blocks;
        }
        fits
    }

    pub fn give(&mut self, blocks: usize) {
        self.used = self.used.saturating_sub(blocks);
    }

    /// Positions the whole pool holds.
    pub fn capacity_tokens(&self) -> usize {
        self.total * BLOCK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_taken_until_the_cap_and_given_back() {
        // 100 bytes per position, room for 3 blocks and a bit
        let mut p = KvPool::new(100, 3 * 1600 + 99);
        assert_eq!((p.total, p.capacity_tokens()), (3, 48));
        assert_eq!(KvPool::blocks_for(17), 2);
        assert!(p.try_take(2));
        assert!(!p.try_take(2), "only one block is left");
        assert!(p.try_take(1));
        p.give(2);
        assert!(p.try_take(2));
        assert_eq!(p.used, 3);
    }
}
