//! Prefix-cache affinity: which replica last served each prompt block, in a bounded table
//! ([`super::block_table`]: least recently used blocks go first), so that a
//! request whose prompt starts like earlier ones can go where that prefix is likely still in
//! the KV cache. Blocks are fixed-size byte runs of the prompt's JSON, hashed in a chain (equal
//! hash = equal prefix). Memory is bounded by `routing.prefix_cache_entries` for the pool.
//!
//! The index also forgets what a replica's own cache has evicted: each replica has a budget of
//! blocks ([`budgets`]: its share of the index in proportion to its KV capacity, and no more than
//! that capacity holds), and only blocks among the last `budget` places of the sequence sent to
//! it count as held — a replica's prefix cache evicts least recently used blocks first, and a
//! block sent again moves up (see [`PrefixIndex::record`]). The pool registers its replicas with
//! [`PrefixIndex::register`] after every replica-set change and scrape; a replica that leaves
//! the pool takes its entries with it at once (they are no longer matched, and are removed as
//! lookups meet them or the cache evicts them), and one that comes back at the same address
//! starts empty.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use super::block_table::{BlockTable, Owner};

/// The most blocks of one prompt indexed (the first ones: where shared prefixes are).
pub const MAX_BLOCKS: usize = 512;

/// A registered replica's window over the blocks sent to it.
#[derive(Debug)]
struct Slot {
    generation: u64,
    /// Blocks newly placed on the replica so far (the last one's `seq`).
    placed: AtomicU64,
    /// How many of the most recent blocks count as held.
    budget: AtomicU64,
}

impl Slot {
    fn holds(&self, owner: &Owner) -> bool {
        owner.generation == self.generation
            && self
                .placed
                .load(Ordering::Relaxed)
                .saturating_sub(owner.seq)
                < self.budget.load(Ordering::Relaxed)
    }
}

pub struct PrefixIndex {
    owners: BlockTable,
    /// Registered replicas by id; replaced whole when the replica set changes (rare), read
    /// without locks.
    slots: ArcSwap<HashMap<u64, Arc<Slot>>>,
    generations: AtomicU64,
    entries: usize,
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

/// Each replica's budget of index blocks. `replicas` gives each one's KV-cache capacity in
/// tokens when known. The index's `entries` are shared in proportion to capacity (a replica
/// whose capacity is unknown counts as the mean of the known ones; with none known, equal
/// shares), and no replica gets more blocks than its cache holds (`block_tokens` tokens each).
pub fn budgets(
    entries: usize,
    block_tokens: u64,
    replicas: &[(u64, Option<u64>)],
) -> Vec<(u64, u64)> {
    let known: Vec<u64> = replicas.iter().filter_map(|(_, kv)| *kv).collect();
    let mean = if known.is_empty() {
        1.0
    } else {
        known.iter().sum::<u64>() as f64 / known.len() as f64
    };
    let weight = |kv: Option<u64>| kv.map_or(mean, |k| k as f64);
    let total: f64 = replicas.iter().map(|(_, kv)| weight(*kv)).sum();
    replicas
        .iter()
        .map(|(id, kv)| {
            let share = if total > 0.0 {
                (entries as f64 * weight(*kv) / total).floor() as u64
            } else {
                0
            };
            let cap = kv.map_or(u64::MAX, |k| k / block_tokens.max(1));
            (*id, share.min(cap).max(1))
        })
        .collect()
}

impl PrefixIndex {
    pub fn new(entries: usize) -> Self {
        Self {
            owners: BlockTable::new(entries.max(16)),
            slots: ArcSwap::from_pointee(HashMap::new()),
            generations: AtomicU64::new(0),
            entries: entries.max(16),
        }
    }

    /// Most blocks the index keeps for the whole pool.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Registers `replicas` (a pool's routing snapshot) with budgets from their reported KV
    /// capacities; `block_chars` is the index's block size (`routing.prefix_block_chars`).
    /// What discovery, the scraper and the fleet simulation call.
    pub fn register(&self, replicas: &[Arc<crate::replica::Replica>], block_chars: u32) {
        let block_tokens = u64::from(block_chars).div_ceil(crate::openai::BYTES_PER_TOKEN as u64);
        let capacities: Vec<(u64, Option<u64>)> = replicas
            .iter()
            .map(|r| (r.id, r.kv_capacity_tokens()))
            .collect();
        self.set_replicas(&budgets(self.entries, block_tokens, &capacities));
    }

    /// Registers the pool's replicas with their budgets (from [`budgets`]). Replicas already
    /// registered keep what they hold under the new budget; those not listed are dropped with
    /// their entries; new ones start empty. Off the hot path: on replica-set changes and after
    /// scrapes.
    pub fn set_replicas(&self, budgets: &[(u64, u64)]) {
        let current = self.slots.load();
        let same_set = current.len() == budgets.len()
            && budgets.iter().all(|(id, _)| current.contains_key(id));
        if same_set {
            for (id, budget) in budgets {
                current[id].budget.store(*budget, Ordering::Relaxed);
            }
            return;
        }
        let next: HashMap<u64, Arc<Slot>> = budgets
            .iter()
            .map(|(id, budget)| {
                let slot = match current.get(id) {
                    Some(slot) => {
                        slot.budget.store(*budget, Ordering::Relaxed);
                        slot.clone()
                    }
                    None => Arc::new(Slot {
                        // Kept in 24 bits by the table; a wrap after 16M registrations could
                        // at worst revive a long-gone replica's entries as a hint.
                        generation: self.generations.fetch_add(1, Ordering::Relaxed) & 0xFF_FFFF,
                        placed: AtomicU64::new(0),
                        budget: AtomicU64::new(*budget),
                    }),
                };
                (*id, slot)
            })
            .collect();
        self.slots.store(Arc::new(next));
    }

    /// Counts, per replica, the leading blocks of the prompt it holds (the run from the first
    /// block up to the first it does not hold). Entries of replicas gone from the pool, or of
    /// blocks their caches have evicted by now, are removed as they are met.
    pub fn lookup(&self, blocks: &[u64]) -> PrefixMatch {
        let slots = self.slots.load();
        let tick = self.owners.touch();
        // Replicas whose run is still going, with its length.
        let mut runs: Vec<(u64, u32, bool)> = Vec::new();
        for (i, hash) in blocks.iter().enumerate() {
            let holders = self.owners.holders(*hash, tick);
            let mut any = false;
            for owner in holders.iter() {
                if !slots
                    .get(&owner.replica)
                    .is_some_and(|slot| slot.holds(owner))
                {
                    // Evicted from the replica's cache by now, or the replica left the pool:
                    // the entry will never match again.
                    self.owners.remove(*hash, owner.replica);
                    continue;
                }
                match runs.iter_mut().find(|(r, ..)| *r == owner.replica) {
                    Some((_, n, live)) if *live && *n as usize == i => {
                        *n += 1;
                        any = true;
                    }
                    Some(_) => {}
                    None if i == 0 => {
                        runs.push((owner.replica, 1, true));
                        any = true;
                    }
                    None => {}
                }
            }
            for run in runs.iter_mut() {
                run.2 &= run.1 as usize == i + 1;
            }
            if !any {
                break;
            }
        }
        let mut replicas: Vec<(u64, u32)> = runs.into_iter().map(|(r, n, _)| (r, n)).collect();
        replicas.sort_by_key(|r| std::cmp::Reverse(r.1));
        PrefixMatch {
            replicas,
            total_blocks: blocks.len() as u32,
        }
    }

    /// Records that `replica` now holds these blocks. A block takes the newest place in the
    /// replica's window — unless it already sits in the newer half of it: then it stays where
    /// it is (no write). So a block sent often takes at most two places per window, and the
    /// blocks counted as held are never more than the budget and at least half of it.
    pub fn record(&self, blocks: &[u64], replica: u64) {
        let slots = self.slots.load();
        let Some(slot) = slots.get(&replica) else {
            return;
        };
        let half = slot.budget.load(Ordering::Relaxed) / 2;
        let tick = self.owners.touch();
        for hash in blocks {
            let recent = self.owners.get(*hash, replica).is_some_and(|o| {
                o.generation == slot.generation
                    && slot.placed.load(Ordering::Relaxed).saturating_sub(o.seq) < half
            });
            if recent {
                continue;
            }
            let owner = Owner {
                replica,
                generation: slot.generation,
                seq: slot.placed.fetch_add(1, Ordering::Relaxed) + 1,
            };
            self.owners.put(*hash, owner, tick);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: usize, replicas: &[(u64, u64)]) -> PrefixIndex {
        let index = PrefixIndex::new(entries);
        index.set_replicas(replicas);
        index
    }

    #[test]
    fn every_replica_holding_the_leading_blocks_is_known() {
        let index = index(1000, &[(7, 100), (8, 100), (9, 100)]);
        index.record(&[1, 2, 3, 4], 7);
        index.record(&[1, 2, 9], 8);
        // Replica 9 holds blocks 2 and 3 but not block 1: no leading run.
        index.record(&[2, 3], 9);
        let m = index.lookup(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(m.total_blocks, 8);
        // Replica 7 holds blocks 1–4, replica 8 blocks 1–2 (both were sent the shared start);
        // block 5 is nobody's.
        assert_eq!(m.replicas, vec![(7, 4), (8, 2)]);
        assert_eq!(m.fraction(7), 0.5);
        assert_eq!(m.fraction(8), 0.25);
        assert_eq!(m.fraction(9), 0.0);
        assert_eq!(
            index.lookup(&[42, 1, 2]).replicas,
            vec![],
            "a different first block matches nothing"
        );
        index.record(&[50], 99);
        assert_eq!(
            index.lookup(&[50]).replicas,
            vec![],
            "a replica not in the pool is not recorded"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let index = PrefixIndex::new(100);
        let ids: Vec<(u64, u64)> = (0..1000u64).map(|r| (r, 100)).collect();
        index.set_replicas(&ids);
        for request in 0..1000u64 {
            index.record(&[request * 10, request * 10 + 1], request);
        }
        // The table rounds 100 entries up to whole sets of 8: 13 sets, and a power of two of
        // them, 16, so 128 entries. That slack is the table's layout; beyond it nothing is kept.
        let held = |block: u64| !index.lookup(&[block]).replicas.is_empty();
        let kept = (0..1000u64)
            .map(|r| usize::from(held(r * 10)) + usize::from(held(r * 10 + 1)))
            .sum::<usize>();
        assert_eq!(kept, 128, "entries kept with a limit of 100");
        // Each request sent two blocks: at most 64 replicas still hold their first one.
        let known = (0..1000u64).filter(|r| held(r * 10)).count();
        assert_eq!(known, 64);
    }

    #[test]
    fn a_replica_holds_only_its_most_recent_budget_of_blocks() {
        let index = index(1000, &[(1, 4), (2, 100)]);
        index.record(&[10, 11], 1);
        index.record(&[20, 21], 1);
        index.record(&[30, 31], 1);
        // Six blocks sent, a budget of four: the first prompt is evicted on replica 1.
        assert_eq!(index.lookup(&[10, 11]).replicas, vec![]);
        assert_eq!(index.lookup(&[20, 21]).replicas, vec![(1, 2)]);
        assert_eq!(index.lookup(&[30, 31]).replicas, vec![(1, 2)]);
        // Sending [20, 21] again moves it up (it was in the older half of the window): after one
        // more new prompt it is still held and [30, 31] — now the least recently sent — is not.
        index.record(&[20, 21], 1);
        index.record(&[40, 41], 1);
        assert_eq!(index.lookup(&[20, 21]).replicas, vec![(1, 2)]);
        assert_eq!(index.lookup(&[30, 31]).replicas, vec![]);
        assert_eq!(index.lookup(&[40, 41]).replicas, vec![(1, 2)]);
        // Another replica's budget is its own.
        for b in 0..50u64 {
            index.record(&[100 + b], 2);
        }
        assert_eq!(index.lookup(&[40, 41]).replicas, vec![(1, 2)]);
        assert_eq!(index.lookup(&[100]).replicas, vec![(2, 1)]);
        // A smaller budget applies at once to what is held.
        index.set_replicas(&[(1, 2), (2, 10)]);
        assert_eq!(index.lookup(&[20, 21]).replicas, vec![]);
        assert_eq!(index.lookup(&[40, 41]).replicas, vec![(1, 2)]);
        assert_eq!(index.lookup(&[100]).replicas, vec![]);
        assert_eq!(index.lookup(&[149]).replicas, vec![(2, 1)]);
    }

    #[test]
    fn a_block_sent_often_stays_held_without_crowding_out_the_budget() {
        let index = index(1000, &[(1, 6)]);
        const HOT: u64 = 1_000;
        for b in 0..30u64 {
            index.record(&[HOT], 1);
            index.record(&[b], 1);
        }
        let held: Vec<u64> = (0..30u64)
            .filter(|b| !index.lookup(&[*b]).replicas.is_empty())
            .collect();
        assert_eq!(index.lookup(&[HOT]).replicas, vec![(1, 1)]);
        // The hot block moves up once every three new blocks (when it reaches the older half of
        // the window): the six places hold it and the five newest others, the budget exactly.
        assert_eq!(held, vec![25, 26, 27, 28, 29]);
    }

    #[test]
    fn a_removed_replica_takes_its_entries_and_returns_empty() {
        let index = index(1000, &[(1, 100), (2, 100)]);
        index.record(&[10, 11], 1);
        index.record(&[20], 2);
        index.set_replicas(&[(2, 100)]);
        assert_eq!(index.lookup(&[10, 11]).replicas, vec![]);
        assert_eq!(index.lookup(&[20]).replicas, vec![(2, 1)]);
        // Back at the same address: it starts empty (its old cache is gone with the process).
        index.set_replicas(&[(1, 100), (2, 100)]);
        assert_eq!(index.lookup(&[10, 11]).replicas, vec![]);
        index.record(&[10, 11], 1);
        assert_eq!(index.lookup(&[10, 11]).replicas, vec![(1, 2)]);
    }

    #[test]
    fn budgets_follow_kv_capacity_and_never_exceed_it() {
        // 1000 entries; blocks of 64 tokens. Replica 1 caches 32,000 tokens, replica 2 96,000,
        // replica 3 is unknown and counts as the mean (64,000): shares 1/6, 1/2, 1/3.
        assert_eq!(
            budgets(1000, 64, &[(1, Some(32_000)), (2, Some(96_000)), (3, None)]),
            vec![(1, 166), (2, 500), (3, 333)]
        );
        // Nothing known: equal shares.
        assert_eq!(
            budgets(1000, 64, &[(1, None), (2, None), (3, None)]),
            vec![(1, 333), (2, 333), (3, 333)]
        );
        // A large index: each replica holds no more than its cache (6,400 / 64 = 100 blocks).
        assert_eq!(
            budgets(100_000, 64, &[(1, Some(6_400)), (2, Some(12_800))]),
            vec![(1, 100), (2, 200)]
        );
        assert_eq!(budgets(1000, 64, &[]), vec![]);
    }
}
