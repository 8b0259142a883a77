//! The prefix index's storage: a bounded map from (block hash, replica) to that replica's hold
//! on the block, set-associative: a hash's entries — one per replica holding it — live in the
//! 8 places of its set, and a full set replaces its least recently used entry. So the index
//! knows every replica that recently received a shared prefix, not only the last one. Lock-free — every field is an atomic, a reader re-checks the key after reading the
//! value, so a concurrent overwrite reads as a miss — and deterministic: the same calls give the
//! same contents, so the fleet simulation reproduces a run exactly (TinyUFO, used before,
//! seeds its frequency sketch at random per process).

use std::sync::atomic::{AtomicU64, Ordering};

const WAYS: usize = 8;
/// The key stored for hash 0, so that 0 can mean "empty".
const ZERO_KEY: u64 = 0x9E37_79B9_7F4A_7C15;

/// Who holds a block: the replica, which registration of it, and its position in the order of
/// blocks the replica was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    pub replica: u64,
    /// Below 2^24.
    pub generation: u64,
    /// Below 2^40.
    pub seq: u64,
}

#[derive(Default)]
struct Entry {
    key: AtomicU64,
    replica: AtomicU64,
    /// generation << 40 | seq.
    meta: AtomicU64,
    /// Table tick of the last use, for replacement.
    touched: AtomicU64,
}

pub struct BlockTable {
    entries: Box<[Entry]>,
    /// Sets − 1 (a power of two).
    mask: usize,
    /// Advances once per `touch` call (a request), not per block.
    tick: AtomicU64,
}

fn key_of(hash: u64) -> u64 {
    if hash == 0 { ZERO_KEY } else { hash }
}

const SEQ_BITS: u32 = 40;

impl BlockTable {
    /// A table of at least `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        Self {
            entries: (0..sets * WAYS).map(|_| Entry::default()).collect(),
            mask: sets - 1,
            tick: AtomicU64::new(1),
        }
    }

    /// Starts a batch of gets and puts (one request's blocks) and returns its tick.
    pub fn touch(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn set(&self, key: u64) -> &[Entry] {
        // The low bits of a chained hash are as good as any; mix the high ones in anyway.
        let index = ((key ^ (key >> 29)) as usize) & self.mask;
        &self.entries[index * WAYS..(index + 1) * WAYS]
    }

    fn read(entry: &Entry, key: u64) -> Option<Owner> {
        let replica = entry.replica.load(Ordering::Acquire);
        let meta = entry.meta.load(Ordering::Acquire);
        // Overwritten while we read: a miss.
        if entry.key.load(Ordering::Acquire) != key {
            return None;
        }
        Some(Owner {
            replica,
            generation: meta >> SEQ_BITS,
            seq: meta & ((1 << SEQ_BITS) - 1),
        })
    }

    /// Every replica's hold on `hash` (at most 8), marking them used at `tick`.
    pub fn holders(&self, hash: u64, tick: u64) -> Holders {
        let key = key_of(hash);
        let mut found = Holders::default();
        for entry in self.set(key) {
            if entry.key.load(Ordering::Acquire) != key {
                continue;
            }
            if let Some(owner) = Self::read(entry, key) {
                entry.touched.store(tick, Ordering::Relaxed);
                found.owners[found.len] = owner;
                found.len += 1;
            }
        }
        found
    }

    fn entry_of(&self, key: u64, replica: u64) -> Option<&Entry> {
        self.set(key).iter().find(|e| {
            e.key.load(Ordering::Acquire) == key && e.replica.load(Ordering::Acquire) == replica
        })
    }

    /// `replica`'s hold on `hash`.
    pub fn get(&self, hash: u64, replica: u64) -> Option<Owner> {
        let key = key_of(hash);
        Self::read(self.entry_of(key, replica)?, key).filter(|o| o.replica == replica)
    }

    /// Sets `owner.replica`'s hold on `hash`, replacing the set's least recently used entry if
    /// it is new and the set is full.
    pub fn put(&self, hash: u64, owner: Owner, tick: u64) {
        let key = key_of(hash);
        let set = self.set(key);
        let entry = self
            .entry_of(key, owner.replica)
            .or_else(|| set.iter().find(|e| e.key.load(Ordering::Relaxed) == 0))
            .unwrap_or_else(|| {
                set.iter()
                    .min_by_key(|e| e.touched.load(Ordering::Relaxed))
                    .expect("a set has ways")
            });
        // Readers that see the old key with the new value re-check the key and miss. Two
        // writers racing for one place may mix their fields: the index is a hint, and such an
        // entry at worst points one block at the wrong replica until it is replaced.
        entry.key.store(0, Ordering::Release);
        entry.replica.store(owner.replica, Ordering::Release);
        entry.meta.store(
            (owner.generation << SEQ_BITS) | (owner.seq & ((1 << SEQ_BITS) - 1)),
            Ordering::Release,
        );
        entry.touched.store(tick, Ordering::Relaxed);
        entry.key.store(key, Ordering::Release);
    }

    /// Forgets `replica`'s hold on `hash`.
    pub fn remove(&self, hash: u64, replica: u64) {
        let key = key_of(hash);
        if let Some(entry) = self.entry_of(key, replica) {
            let _ = entry
                .key
                .compare_exchange(key, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// The holders of one block, without allocating.
#[derive(Debug, Clone, Copy, Default)]
pub struct Holders {
    owners: [Owner; WAYS],
    len: usize,
}

impl Holders {
    pub fn iter(&self) -> impl Iterator<Item = &Owner> {
        self.owners[..self.len].iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(replica: u64, seq: u64) -> Owner {
        Owner {
            replica,
            generation: 3,
            seq,
        }
    }

    #[test]
    fn put_get_remove() {
        let t = BlockTable::new(64);
        let tick = t.touch();
        assert_eq!(t.get(5, 1), None);
        t.put(5, owner(1, 10), tick);
        t.put(0, owner(2, 11), tick);
        assert_eq!(t.get(5, 1), Some(owner(1, 10)));
        assert_eq!(
            t.get(0, 2),
            Some(owner(2, 11)),
            "hash 0 is a key like any other"
        );
        t.put(5, owner(1, 12), tick);
        assert_eq!(
            t.get(5, 1),
            Some(owner(1, 12)),
            "a put replaces the replica's hold"
        );
        t.put(5, owner(7, 13), tick);
        let holders: Vec<Owner> = t.holders(5, tick).iter().copied().collect();
        assert_eq!(
            holders,
            vec![owner(1, 12), owner(7, 13)],
            "each replica has its own"
        );
        t.remove(5, 1);
        assert_eq!(t.get(5, 1), None);
        assert_eq!(t.get(5, 7), Some(owner(7, 13)));
    }

    #[test]
    fn bounded_and_least_recently_used_goes_first() {
        let t = BlockTable::new(8); // one set of 8 ways
        let first = t.touch();
        for h in 1..=8u64 {
            t.put(h, owner(h, h), first);
        }
        // Hash 1 is used again later; a ninth block replaces one of the others.
        let later = t.touch();
        assert_eq!(t.holders(1, later).iter().count(), 1);
        t.put(100, owner(100, 100), later);
        let present = (1..=8u64).filter(|h| t.get(*h, *h).is_some()).count();
        assert_eq!(present, 7, "exactly one entry made room");
        assert_eq!(
            t.get(1, 1),
            Some(owner(1, 1)),
            "the recently used entry stayed"
        );
        assert_eq!(t.get(100, 100), Some(owner(100, 100)));
    }

    #[test]
    fn the_same_calls_give_the_same_contents() {
        let run = || {
            let t = BlockTable::new(256);
            for request in 0..5_000u64 {
                let tick = t.touch();
                for b in 0..8 {
                    let h = (request % 97) * 1_000 + b;
                    if t.get(h, request % 5).is_none() {
                        t.put(h, owner(request % 5, request), tick);
                    }
                }
            }
            (0..100_000u64)
                .flat_map(|h| (0..5).map(move |r| (h, r)))
                .filter_map(|(h, r)| t.get(h, r).map(|o| (h, o)))
                .collect::<Vec<_>>()
        };
        let a = run();
        // 97 prompts of 8 blocks on 5 replicas are far more than the 256 places (32 sets of 8):
        // every place is taken, and none beyond them.
        assert_eq!(a.len(), 256);
        assert_eq!(a, run());
    }
}
