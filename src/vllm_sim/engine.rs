//! The engine model of one vLLM replica under continuous batching: a pure state machine with no
//! clock inside. [`Engine::submit`] queues a request; [`Engine::step`] plans one engine step
//! starting at `now` and returns what it produces and when it ends, so the same code runs in
//! real time (`infergate sim`) and in virtual time (the fleet simulation).
//!
//! Scheduling follows vLLM's: every step first gives each running request its next tokens (one
//! for a decoding request, a chunk for a request still in prefill), then admits waiting requests
//! first-come-first-served within `max_num_batched_tokens` and `max_num_seqs`. The KV cache is
//! counted in blocks; full prompt blocks are identified by a chained hash and outlive their
//! request as prefix cache (LRU) until the space is needed. A running request that cannot get a
//! block preempts the newest running request, which frees its blocks and goes back to the front
//! of the queue to be recomputed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::profile::Profile;

/// A request as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineRequest {
    pub id: u64,
    pub prompt_tokens: u32,
    /// One hash per full block of the prompt, each chained over the blocks before it, so equal
    /// hashes mean equal prefixes.
    pub block_hashes: Vec<u64>,
    /// Tokens to generate before the request finishes.
    pub output_tokens: u32,
    /// LoRA adapter, if the request names one.
    pub lora: Option<String>,
}

/// Something a step produced for one request; all happen at the step's end.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Token `index` (0 = first) was generated. `gap` is the time since the previous token
    /// (None for the first).
    Token {
        id: u64,
        index: u32,
        gap: Option<f64>,
    },
    /// The request generated all its tokens.
    Finished(Finished),
    /// The request lost its KV blocks and went back to the queue; it resumes later.
    Preempted { id: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub id: u64,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// Prompt tokens served from the prefix cache at the request's (last) admission.
    pub cached_tokens: u32,
    pub queue_time: f64,
    pub ttft: f64,
    pub e2e: f64,
}

/// One planned step: it runs from `start` to `end`; its events happen at `end`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub start: f64,
    pub end: f64,
    pub prefill_tokens: u32,
    pub decode_seqs: u32,
    pub events: Vec<Event>,
}

/// Counters and gauges, as `/metrics` reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub waiting: usize,
    pub running: usize,
    /// Share of KV blocks held by running requests (0–1).
    pub kv_usage: f64,
    pub prefix_queries_tokens: u64,
    pub prefix_hits_tokens: u64,
    pub preemptions: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub running_loras: Vec<String>,
    pub waiting_loras: Vec<String>,
    pub loaded_loras: Vec<String>,
}

#[derive(Debug)]
struct Seq {
    req: EngineRequest,
    arrived: f64,
    first_scheduled: Option<f64>,
    first_token_at: Option<f64>,
    last_token_at: f64,
    /// Tokens whose KV is in the cache.
    computed: u32,
    generated: u32,
    decoding: bool,
    /// Hashed prompt blocks this request holds (shared, refcounted), a prefix of its blocks.
    shared: Vec<u64>,
    /// Blocks held by this request alone.
    private_blocks: u32,
    cached_tokens: u32,
}

impl Seq {
    fn held_blocks(&self) -> u32 {
        self.shared.len() as u32 + self.private_blocks
    }

    /// Tokens to compute before the next token can be sampled: the prompt and, after a
    /// preemption, the tokens generated before it.
    fn prefill_target(&self) -> u32 {
        self.req.prompt_tokens + self.generated
    }
}

/// The prefix cache: hashed blocks no request holds, least recently used first out.
#[derive(Debug, Default)]
struct PrefixCache {
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

pub struct Engine {
    profile: Profile,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    /// Blocks no running request holds (some of them still hold cached prefixes).
    free_blocks: u32,
    /// Hashed blocks held by running requests, with their holder counts.
    active: HashMap<u64, u32>,
    cache: PrefixCache,
    /// LoRA adapters resident, with the time each was last used.
    loaded_loras: Vec<(String, f64)>,
    stats: EngineStats,
}

fn blocks_for(tokens: u32, block_size: u32) -> u32 {
    tokens.div_ceil(block_size)
}

impl Engine {
    pub fn new(profile: Profile) -> Self {
        Self {
            free_blocks: profile.kv_blocks,
            profile,
            waiting: VecDeque::new(),
            running: Vec::new(),
            active: HashMap::new(),
            cache: PrefixCache::default(),
            loaded_loras: Vec::new(),
            stats: EngineStats::default(),
        }
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Queues a request that arrived at `now`.
    pub fn submit(&mut self, req: EngineRequest, now: f64) {
        self.waiting.push_back(Seq {
            req,
            arrived: now,
            first_scheduled: None,
            first_token_at: None,
            last_token_at: now,
            computed: 0,
            generated: 0,
            decoding: false,
            shared: Vec::new(),
            private_blocks: 0,
            cached_tokens: 0,
        });
    }

    /// Drops a request (its client went away), freeing its blocks. False if it is unknown.
    pub fn abort(&mut self, id: u64) -> bool {
        if let Some(i) = self.waiting.iter().position(|s| s.req.id == id) {
            self.waiting.remove(i);
            return true;
        }
        if let Some(i) = self.running.iter().position(|s| s.req.id == id) {
            let mut seq = self.running.remove(i);
            self.release(&mut seq);
            return true;
        }
        false
    }

    /// Whether a step would do anything.
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    pub fn stats(&self) -> EngineStats {
        let mut stats = self.stats.clone();
        stats.waiting = self.waiting.len();
        stats.running = self.running.len();
        let used = self.profile.kv_blocks - self.free_blocks;
        stats.kv_usage = f64::from(used) / f64::from(self.profile.kv_blocks.max(1));
        let adapters = |seqs: &mut dyn Iterator<Item = &Seq>| {
            let set: HashSet<&String> = seqs.filter_map(|s| s.req.lora.as_ref()).collect();
            let mut list: Vec<String> = set.into_iter().cloned().collect();
            list.sort();
            list
        };
        stats.running_loras = adapters(&mut self.running.iter());
        stats.waiting_loras = adapters(&mut self.waiting.iter());
        stats.loaded_loras = self.loaded_loras.iter().map(|(n, _)| n.clone()).collect();
        stats
    }

    /// Plans and applies one step starting at `now`; None when there is nothing to do (or
    /// nothing can be scheduled yet).
    pub fn step(&mut self, now: f64) -> Option<Step> {
        if !self.has_work() {
            return None;
        }
        let mut events = Vec::new();
        let mut budget = self.profile.max_num_batched_tokens;
        // (index into running, tokens this step)
        let mut planned: Vec<(usize, u32)> = Vec::new();
        let mut preempted_any = false;

        // 1. Running requests, oldest first.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let tokens = if seq.decoding {
                1
            } else {
                (seq.prefill_target() - seq.computed).min(budget)
            };
            let need = blocks_for(seq.computed + tokens, self.profile.block_size)
                .saturating_sub(seq.held_blocks());
            let mut preempted_self = false;
            while self.free_blocks < need {
                let victim = self.running.len() - 1;
                preempted_any = true;
                events.push(Event::Preempted {
                    id: self.running[victim].req.id,
                });
                self.preempt(victim);
                if victim == i {
                    preempted_self = true;
                    break;
                }
            }
            if preempted_self {
                break;
            }
            self.allocate(need);
            self.running[i].private_blocks += need;
            budget -= tokens;
            planned.push((i, tokens));
            i += 1;
        }

        // 2. Waiting requests, first come first served (a request whose LoRA adapter cannot be
        // loaded yet is passed over, as vLLM does). No admissions in a step that preempted.
        let mut lora_load_time = 0.0;
        let mut w = 0;
        while !preempted_any
            && budget > 0
            && w < self.waiting.len()
            && (self.running.len() as u32) < self.profile.max_num_seqs
        {
            match self.lora_ready(w, now) {
                LoraReady::Yes { load_cost } => {
                    match self.try_admit(w, budget, now) {
                        Some(tokens) => {
                            lora_load_time += load_cost;
                            budget -= tokens;
                            planned.push((self.running.len() - 1, tokens));
                        }
                        None => break, // no KV space: head-of-line waits
                    }
                }
                LoraReady::No => w += 1,
            }
        }

        if planned.is_empty() {
            return None;
        }

        // 3. The step's cost.
        let mut prefill_tokens = 0;
        let mut decode_seqs = 0;
        let mut context: u64 = 0;
        for &(i, tokens) in &planned {
            let seq = &self.running[i];
            if seq.decoding {
                decode_seqs += 1;
                context += u64::from(seq.computed);
            } else {
                prefill_tokens += tokens;
            }
        }
        let end =
            now + lora_load_time + self.profile.step_time(prefill_tokens, decode_seqs, context);

        // 4. Apply: tokens are produced at the end of the step.
        let mut finished = Vec::new();
        for &(i, tokens) in &planned {
            let seq = &mut self.running[i];
            seq.computed += tokens;
            if !seq.decoding && seq.computed < seq.prefill_target() {
                continue; // a prefill chunk, more to come
            }
            seq.decoding = true;
            let gap = seq.first_token_at.map(|_| end - seq.last_token_at);
            seq.first_token_at.get_or_insert(end);
            seq.last_token_at = end;
            events.push(Event::Token {
                id: seq.req.id,
                index: seq.generated,
                gap,
            });
            seq.generated += 1;
            self.stats.generation_tokens += 1;
            if seq.generated >= seq.req.output_tokens {
                finished.push(i);
            }
        }
        for i in 0..self.running.len() {
            self.promote_full_blocks(i);
        }
        for &(i, _) in &planned {
            if let Some(lora) = &self.running[i].req.lora
                && let Some(entry) = self.loaded_loras.iter_mut().find(|(n, _)| n == lora)
            {
                entry.1 = end;
            }
        }
        finished.sort_unstable();
        for i in finished.into_iter().rev() {
            let mut seq = self.running.remove(i);
            self.release(&mut seq);
            let first = seq.first_token_at.unwrap_or(end);
            events.push(Event::Finished(Finished {
                id: seq.req.id,
                prompt_tokens: seq.req.prompt_tokens,
                output_tokens: seq.generated,
                cached_tokens: seq.cached_tokens,
                queue_time: seq.first_scheduled.unwrap_or(now) - seq.arrived,
                ttft: first - seq.arrived,
                e2e: end - seq.arrived,
            }));
        }
        Some(Step {
            start: now,
            end,
            prefill_tokens,
            decode_seqs,
            events,
        })
    }

    /// Admits waiting request `w` with a first chunk of at most `budget` tokens; returns the
    /// chunk, or None when the KV cache cannot hold it.
    fn try_admit(&mut self, w: usize, budget: u32, now: f64) -> Option<u32> {
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
    fn allocate(&mut self, n: u32) {
        self.free_blocks -= n;
        while self.cache.len() > self.free_blocks as usize {
            self.cache.evict_oldest();
        }
    }

    /// Full prompt blocks this request computed become shared (hashed) blocks, so that
    /// concurrent and later requests with the same prefix can use them.
    fn promote_full_blocks(&mut self, i: usize) {
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
    fn release(&mut self, seq: &mut Seq) {
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

    fn preempt(&mut self, index: usize) {
        let mut seq = self.running.remove(index);
        self.release(&mut seq);
        seq.computed = 0;
        seq.decoding = false;
        self.stats.preemptions += 1;
        self.waiting.push_front(seq);
    }

    fn lora_ready(&mut self, w: usize, now: f64) -> LoraReady {
        let Some(lora) = self.waiting[w].req.lora.clone() else {
            return LoraReady::Yes { load_cost: 0.0 };
        };
        if self.loaded_loras.iter().any(|(n, _)| *n == lora) {
            return LoraReady::Yes { load_cost: 0.0 };
        }
        if (self.loaded_loras.len() as u32) >= self.profile.max_loras {
            // Evict the least recently used adapter that no running request uses.
            let busy: HashSet<&String> = self
                .running
                .iter()
                .filter_map(|s| s.req.lora.as_ref())
                .collect();
            let idle = self
                .loaded_loras
                .iter()
                .enumerate()
                .filter(|(_, (n, _))| !busy.contains(n))
                .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
                .map(|(i, _)| i);
            match idle {
                Some(i) => {
                    self.loaded_loras.remove(i);
                }
                None => return LoraReady::No,
            }
        }
        self.loaded_loras.push((lora, now));
        LoraReady::Yes {
            load_cost: self.profile.lora_load_time,
        }
    }
}

enum LoraReady {
    Yes { load_cost: f64 },
    No,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vllm_sim::profile::profile;

    fn request(id: u64, prompt_tokens: u32, output_tokens: u32, prefix: u64) -> EngineRequest {
        // Block hashes chained from a per-prefix seed: equal `prefix` = equal prompt.
        let blocks = prompt_tokens / 16;
        let block_hashes = (0..u64::from(blocks))
            .map(|b| prefix * 1_000_003 + b)
            .collect();
        EngineRequest {
            id,
            prompt_tokens,
            block_hashes,
            output_tokens,
            lora: None,
        }
    }

    /// Runs the engine until idle, returning every step.
    fn run(engine: &mut Engine, mut now: f64) -> Vec<Step> {
        let mut steps = Vec::new();
        while let Some(step) = engine.step(now) {
            now = step.end;
            steps.push(step);
            assert!(steps.len() < 1_000_000, "engine does not finish");
        }
        steps
    }

    fn finished(steps: &[Step]) -> Vec<Finished> {
        steps
            .iter()
            .flat_map(|s| &s.events)
            .filter_map(|e| match e {
                Event::Finished(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lone_request_ttft_is_the_profile_formula() {
        let p = profile("llama-8b-h100").unwrap();
        let mut engine = Engine::new(p.clone());
        engine.submit(request(1, 1000, 3, 1), 0.0);
        let steps = run(&mut engine, 0.0);
        assert_eq!(steps.len(), 3);
        let done = &finished(&steps)[0];
        let prefill = p.step_time(1000, 0, 0);
        assert!(
            (done.ttft - prefill).abs() < 1e-12,
            "{} vs {prefill}",
            done.ttft
        );
        // Then two decode steps over a context of 1000 and 1001 tokens.
        let e2e = prefill + p.step_time(0, 1, 1000) + p.step_time(0, 1, 1001);
        assert!((done.e2e - e2e).abs() < 1e-12);
        assert_eq!(done.output_tokens, 3);
        assert_eq!(engine.stats().running, 0);
        assert_eq!(engine.stats().generation_tokens, 3);
    }

    #[test]
    fn long_prompts_are_prefilled_in_chunks() {
        let p = profile("llama-8b-h100").unwrap();
        let mut engine = Engine::new(p.clone());
        engine.submit(request(1, 20_000, 1, 1), 0.0);
        let steps = run(&mut engine, 0.0);
        // 8192 + 8192 + 3616 tokens.
        let chunks: Vec<u32> = steps.iter().map(|s| s.prefill_tokens).collect();
        assert_eq!(chunks, vec![8192, 8192, 3616]);
    }

    #[test]
    fn decode_steps_slow_as_the_batch_grows() {
        let p = profile("llama-8b-h100").unwrap();
        let mut durations = Vec::new();
        for batch in [1u64, 8, 64] {
            let mut engine = Engine::new(p.clone());
            for id in 0..batch {
                engine.submit(request(id, 100, 10, id), 0.0);
            }
            let steps = run(&mut engine, 0.0);
            let decode = steps.iter().find(|s| s.decode_seqs > 0).unwrap();
            assert_eq!(u64::from(decode.decode_seqs), batch);
            durations.push(decode.end - decode.start);
        }
        assert!(
            durations[0] < durations[1] && durations[1] < durations[2],
            "{durations:?}"
        );
    }

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
    fn max_num_seqs_bounds_the_batch() {
        let mut p = profile("llama-8b-h100").unwrap();
        p.max_num_seqs = 4;
        let mut engine = Engine::new(p);
        for id in 0..10 {
            engine.submit(request(id, 32, 5, id), 0.0);
        }
        engine.step(0.0).unwrap();
        let stats = engine.stats();
        assert_eq!((stats.running, stats.waiting), (4, 6));
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

    #[test]
    fn lora_adapters_wait_while_all_slots_are_busy() {
        let mut p = profile("llama-8b-h100").unwrap();
        p.max_loras = 1;
        let mut engine = Engine::new(p.clone());
        let with = |id, lora: &str| EngineRequest {
            lora: Some(lora.to_string()),
            ..request(id, 32, 5, id)
        };
        engine.submit(with(1, "a"), 0.0);
        engine.submit(with(2, "b"), 0.0);
        engine.submit(request(3, 32, 5, 3), 0.0);
        let step = engine.step(0.0).unwrap();
        // "a" loads (cost added), "b" must wait, the plain request passes it.
        assert!((step.end - (p.lora_load_time + p.step_time(64, 0, 0))).abs() < 1e-12);
        let stats = engine.stats();
        assert_eq!(stats.running_loras, vec!["a".to_string()]);
        assert_eq!(stats.waiting_loras, vec!["b".to_string()]);
        let steps = run(&mut engine, step.end);
        assert_eq!(finished(&steps).len(), 3);
        assert_eq!(engine.stats().loaded_loras, vec!["b".to_string()]);
    }
}
