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
//!
//! This file holds the engine's interface and its step; the KV cache's block accounting and
//! prefix cache are in `kv`, LoRA adapter residency in `lora`.

mod kv;
mod lora;

use std::collections::{HashMap, HashSet, VecDeque};

use super::profile::Profile;
use kv::{PrefixCache, blocks_for};
use lora::LoraReady;

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
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::vllm_sim::profile::profile;

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
}
