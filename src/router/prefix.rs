//! Prefix-cache affinity: which replica last served each prompt block, in a bounded cache
//! (TinyUFO, which keeps the blocks many requests share and lets one-off blocks go), so that a
//! request whose prompt starts like earlier ones can go where that prefix is likely still in
//! the KV cache. Blocks are fixed-size byte runs of the prompt's JSON, hashed in a chain (equal
//! hash = equal prefix). Memory is bounded by `routing.prefix_cache_entries`.

use tinyufo::TinyUfo;

/// The most blocks of one prompt indexed (the first ones: where shared prefixes are).
pub const MAX_BLOCKS: usize = 512;

pub struct PrefixIndex {
    owners: TinyUfo<u64, u64>,
}

/// How much of a request's prompt each replica is believed to hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixMatch {
    /// (replica id, leading blocks it served last), best first.
    pub replicas: Vec<(u64, u32)>,
    pub total_blocks: u32,
}

impl PrefixMatch {
    /// Share of the prompt's blocks replica `id` holds (0–1).
    pub fn fraction(&self, id: u64) -> f64 {
        if self.total_blocks == 0 {
            return 0.0;
        }
        self.replicas
            .iter()
            .find(|(r, _)| *r == id)
            .map_or(0.0, |(_, n)| f64::from(*n) / f64::from(self.total_blocks))
    }
}

impl PrefixIndex {
    pub fn new(entries: usize) -> Self {
        Self {
            owners: TinyUfo::new(entries.max(16), entries.max(16)),
        }
    }

    /// Counts, per replica, the blocks of the prompt's leading run that the index knows (it
    /// stops at the first block nobody served).
    pub fn lookup(&self, blocks: &[u64]) -> PrefixMatch {
        let mut replicas: Vec<(u64, u32)> = Vec::new();
        for hash in blocks {
            let Some(owner) = self.owners.get(hash) else {
                break;
            };
            match replicas.iter_mut().find(|(r, _)| *r == owner) {
                Some((_, n)) => *n += 1,
                None => replicas.push((owner, 1)),
            }
        }
        replicas.sort_by_key(|r| std::cmp::Reverse(r.1));
        PrefixMatch {
            replicas,
            total_blocks: blocks.len() as u32,
        }
    }

    /// Records that `replica` now holds these blocks.
    pub fn record(&self, blocks: &[u64], replica: u64) {
        for hash in blocks {
            self.owners.put(*hash, replica, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_blocks_are_attributed_to_their_last_server() {
        let index = PrefixIndex::new(1000);
        index.record(&[1, 2, 3, 4], 7);
        index.record(&[1, 2, 9], 8);
        let m = index.lookup(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(m.total_blocks, 8);
        // Blocks 1 and 2 were last served by 8, blocks 3 and 4 by 7; block 5 is unknown.
        assert_eq!(m.replicas, vec![(8, 2), (7, 2)]);
        assert_eq!(m.fraction(7), 0.25);
        assert_eq!(
            index.lookup(&[42, 1, 2]).replicas,
            vec![],
            "a different first block matches nothing"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let index = PrefixIndex::new(100);
        for request in 0..1000u64 {
            index.record(&[request * 10, request * 10 + 1], request);
        }
        let known = (0..1000u64)
            .filter(|r| !index.lookup(&[r * 10]).replicas.is_empty())
            .count();
        assert!(known <= 120, "{known} entries kept with a limit of 100");
    }
}
