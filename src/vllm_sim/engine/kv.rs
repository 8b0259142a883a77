//! The engine's KV cache in blocks: admitting a request with the prompt blocks already in
//! memory (running requests' or the prefix cache's), allocating and freeing blocks, sharing
//! full prompt blocks by hash, and preempting a request whose blocks are needed.

use std::collections::{BTreeMap, HashMap};

use super::{Engine, Seq};

/// The prefix cache: hashed blocks no request holds, least recently used first out.
#[derive(Debug, Default)]
pub(super) struct PrefixCache {
    tick: u64,
    by_hash: HashMap<u64, u64>,
    by_age: BTreeMap<u64, u64>,
}

impl PrefixCache {
    fn len(&self) -> usize {
        self.by_hash.len()
    }
    fn contains(&self, hash: u64) -> bool {
        self.by_hash.contains_key(&hash)
    }
    fn insert(&mut self, hash: u64) {
        self.remove(hash);
        self.tick += 1;
        self.by_hash.insert(hash, self.tick);
        self.by_age.insert(self.tick, hash);
    }
    fn remove(&mut self, hash: u64) -> bool {
        match self.by_hash.remove(&hash) {
            Some(age) => {
                self.by_age.remove(&age);
                true
            }
            None => false,
        }
    }
    fn evict_oldest(&mut self) {
        if let Some((_, hash)) = self.by_age.pop_first() {
            self.by_hash.remove(&hash);
        }
    }
}

pub(super) fn blocks_for(tokens: u32, block_size: u32) -> u32 {
    tokens.div_ceil(block_size)
}

impl Engine {
    /// Admits waiting request `w` with a first chunk of at most `budget` tokens; returns the
    /// chunk, or None when the KV cache cannot hold it.
    pub(super) fn try_admit(&mut self, w: usize, budget: u32, now: f64) -> Option<u32> {
        let bs = self.profile.block_size;
        let seq = &self.waiting[w];
        let target = seq.prefill_target();
        // Leading prompt blocks already in memory; at least one token is always computed.
        let max_matched = (target - 1) / bs;
        let mut hits_active = 0;
        let mut hits_cached = 0;
        for &hash in seq.req.block_hashes.iter().take(max_matched as usize) {
            if self.active.contains_key(&hash) {
                hits_active += 1;
            } else if self.cache.contains(hash) {
                hits_cached += 1;
            } else {
                break;
            }
        }
        let matched = hits_active + hits_cached;
        let matched_tokens = matched * bs;
        let tokens = (target - matched_tokens).min(budget);
        let new_blocks = blocks_for(matched_tokens + tokens, bs) - matched;
        if self.free_blocks < hits_cached + new_blocks {
            return None;
        }
        let mut seq = self.waiting.remove(w).expect("index checked");
        for &hash in seq.req.block_hashes.iter().take(matched as usize) {
            if self.cache.remove(hash) {
                self.free_blocks -= 1;
            }
            *self.active.entry(hash).or_insert(0) += 1;
            seq.shared.push(hash);
        }
        self.allocate(new_blocks);
        seq.private_blocks = new_blocks;
        seq.computed = matched_tokens;
        seq.cached_tokens = matched_tokens;
        seq.first_scheduled.get_or_insert(now);
        self.stats.prefix_queries_tokens += u64::from(target);
        self.stats.prefix_hits_tokens += u64::from(matched_tokens);
        if seq.generated == 0 {
            self.stats.prompt_tokens += u64::from(seq.req.prompt_tokens);
        }
        self.running.push(seq);
        Some(tokens)
    }

    /// Takes `n` free blocks, evicting cached prefixes that no longer fit.
    pub(super) fn allocate(&mut self, n: u32) {
        self.free_blocks -= n;
        while self.cache.len() > self.free_blocks as usize {
            self.cache.evict_oldest();
        }
    }

    /// Full prompt blocks this request computed become shared (hashed) blocks, so that
    /// concurrent and later requests with the same prefix can use them.
    pub(super) fn promote_full_blocks(&mut self, i: usize) {
        let seq = &mut self.running[i];
        let full = (seq.computed / self.profile.block_size) as usize;
        while seq.shared.len() < full.min(seq.req.block_hashes.len()) && seq.private_blocks > 0 {
            let hash = seq.req.block_hashes[seq.shared.len()];
            if self.active.contains_key(&hash) || self.cache.contains(hash) {
                break; // someone else computed the same block; keep ours private
            }
            self.active.insert(hash, 1);
            seq.shared.push(hash);
            seq.private_blocks -= 1;
        }
    }

    /// Frees a request's blocks; its hashed blocks stay cached once no one holds them.
    pub(super) fn release(&mut self, seq: &mut Seq) {
        for hash in seq.shared.drain(..) {
            let holders = self.active.get_mut(&hash).expect("held blocks are active");
            *holders -= 1;
            if *holders == 0 {
                self.active.remove(&hash);
                self.free_blocks += 1;
                self.cache.insert(hash);
            }
        }
        self.free_blocks += seq.private_blocks;
        seq.private_blocks = 0;
    }

    pub(super) fn preempt(&mut self, index: usize) {
        let mut seq = self.running.remove(index);
        self.release(&mut seq);
        seq.computed = 0;
        seq.decoding = false;
        self.stats.preemptions += 1;
        self.waiting.push_front(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{Engine, Event};
    use crate::vllm_sim::profile::profile;

    #[test]
    fn shared_prefix_cuts_ttft_by_the_cached_share() {
        let p = profile("llama-8b-h100").unwrap();
        let mut engine = Engine::new(p.clone());
        engine.submit(request(1, 1024, 2, 7), 0.0);
        let first = finished(&run(&mut engine, 0.0)).remove(0);
        engine.submit(request(2, 1024, 2, 7), 10.0);
        let second = finished(&run(&mut engine, 10.0)).remove(0);
        // 64 blocks; 63 come from the cache, the last block is recomputed (one token at least).
        assert_eq!(second.cached_tokens, 1008);
        assert!((first.ttft - p.step_time(1024, 0, 0)).abs() < 1e-12);
        assert!((second.ttft - p.step_time(16, 0, 0)).abs() < 1e-12);
        // A different prompt of the same length gets no hit.
        engine.submit(request(3, 1024, 2, 8), 20.0);
        let third = finished(&run(&mut engine, 20.0)).remove(0);
        assert_eq!(third.cached_tokens, 0);
        let stats = engine.stats();
        assert_eq!(stats.prefix_hits_tokens, 1008);
        assert_eq!(stats.prefix_queries_tokens, 3 * 1024);
    }

    #[test]
    fn concurrent_requests_share_prefix_blocks() {
        let p = profile("llama-8b-h100").unwrap();
        let mut engine = Engine::new(p);
        engine.submit(request(1, 1024, 50, 7), 0.0);
        let step = engine.step(0.0).unwrap();
        engine.submit(request(2, 1024, 50, 7), step.end);
        engine.step(step.end).unwrap();
        // Request 2 reused request 1's 63 blocks instead of allocating its own.
        let used = engine.profile.kv_blocks - engine.free_blocks;
        assert_eq!(used, 64 + 1 + 1, "64 blocks of prompt, one new block each");
    }

    #[test]
    fn kv_exhaustion_preempts_and_everything_still_finishes() {
        let mut p = profile("llama-8b-h100").unwrap();
        p.kv_blocks = 100; // 1600 tokens of KV
        let mut engine = Engine::new(p);
        for id in 0..8 {
            engine.submit(request(id, 320, 200, id), 0.0);
        }
        let steps = run(&mut engine, 0.0);
        let stats = engine.stats();
        assert!(stats.preemptions > 0, "8 × 520 tokens cannot fit in 1600");
        let preempt_events = steps
            .iter()
            .flat_map(|s| &s.events)
            .filter(|e| matches!(e, Event::Preempted { .. }))
            .count() as u64;
        assert_eq!(preempt_events, stats.preemptions);
        let done = finished(&steps);
        assert_eq!(done.len(), 8);
        assert!(done.iter().all(|f| f.output_tokens == 200));
        // Every token index of every request was emitted exactly once.
        let tokens = steps
            .iter()
            .flat_map(|s| &s.events)
            .filter(|e| matches!(e, Event::Token { .. }))
            .count();
        assert_eq!(tokens, 8 * 200);
        assert_eq!(engine.free_blocks, 100);
        assert_eq!(engine.stats().kv_usage, 0.0);
    }

    #[test]
    fn aborted_requests_free_their_blocks() {
        let p = profile("llama-8b-h100").unwrap();
        let mut engine = Engine::new(p.clone());
        engine.submit(request(1, 500, 100, 1), 0.0);
        engine.step(0.0).unwrap();
        assert!(engine.stats().kv_usage > 0.0);
        assert!(engine.abort(1));
        assert_eq!(engine.stats().kv_usage, 0.0);
        assert!(!engine.has_work());
        assert!(!engine.abort(1));
    }
}
