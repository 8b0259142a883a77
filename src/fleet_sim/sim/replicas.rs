//! The replicas in virtual time: starting and stopping them, publishing the routing snapshot
//! as discovery does, engine steps and the events they produce (tokens, ends), and the scrape
//! of each replica's page.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};

use super::{Ev, Fleet, SimReplica, State};
use crate::fleet_sim::stats::Failure;
use crate::replica::Replica;
use crate::router::Snapshot;
use crate::vllm_sim::engine::{Engine, Event};

impl Fleet<'_> {
    pub(super) fn add_replica(&mut self, p: usize) -> usize {
        let pool = &mut self.pools[p];
        let n = pool.replicas.len();
        let authority: Authority = format!("{}-{n}.sim:80", pool.config.name)
            .parse()
            .unwrap_or_else(|_| Authority::from_static("replica.sim:80"));
        let views = (0..pool.gateways.len())
            .map(|_| {
                let gauge = prometheus::IntGauge::new("infergate_sim_inflight", "in flight")
                    .expect("a valid metric name");
                let authority = authority.clone();
                Arc::new(Replica::new(Scheme::HTTP, authority, gauge, self.epoch))
            })
            .collect();
        let mut profile = pool.profile.clone();
        // Every k-th replica is slow, so a quarter means replicas 3, 7, 11, ... of each pool.
        let mut slow = false;
        if self.spec.slow_fraction > 0.0 {
            let every = (1.0 / self.spec.slow_fraction).round().max(1.0) as usize;
            if n % every == every - 1 {
                slow = true;
                let f = self.spec.slow_factor;
                profile.t0 *= f;
                profile.prefill_per_token *= f;
                profile.decode_per_seq *= f;
                profile.context_per_token *= f;
            }
        }
        let scraped = self.spec.unscraped_fraction <= 0.0 || {
            let every = (1.0 / self.spec.unscraped_fraction).round().max(1.0) as usize;
            !n.is_multiple_of(every)
        };
        pool.replicas.push(SimReplica {
            views,
            engine: Engine::new(profile),
            state: State::Starting,
            busy: false,
            step_events: Vec::new(),
            started: self.now,
            stopped: None,
            served: 0,
            busy_seconds: 0.0,
            slow,
            scraped,
        });
        n
    }

    pub(super) fn make_ready(&mut self, p: usize, r: usize) {
        self.pools[p].replicas[r].state = State::Ready;
        self.publish(p);
    }

    /// Rebuilds each gateway's routing snapshot from the ready replicas (as discovery does).
    pub(super) fn publish(&mut self, p: usize) {
        let pool = &mut self.pools[p];
        let block_chars = pool.config.routing.prefix_block_chars;
        for (g, gateway) in pool.gateways.iter_mut().enumerate() {
            let ready: Vec<Arc<Replica>> = pool
                .replicas
                .iter()
                .filter(|r| r.state == State::Ready)
                .map(|r| r.views[g].clone())
                .collect();
            gateway.snapshot = Snapshot::new(ready);
            gateway.register_prefix_replicas(block_chars);
        }
        let live = pool
            .replicas
            .iter()
            .filter(|r| r.state != State::Stopped)
            .count() as u32;
        self.max_replicas = self.max_replicas.max(live);
    }

    /// Starts the replica's next engine step if it is idle and has work.
    pub(super) fn kick(&mut self, p: usize, r: usize) {
        let replica = &mut self.pools[p].replicas[r];
        if replica.busy || replica.state == State::Stopped || !replica.engine.has_work() {
            return;
        }
        if let Some(step) = replica.engine.step(self.now) {
            replica.busy = true;
            replica.busy_seconds += step.end - step.start;
            replica.step_events = step.events;
            self.at(
                step.end,
                Ev::StepEnd {
                    pool: p,
                    replica: r,
                },
            );
        }
    }

    pub(super) fn step_end(&mut self, p: usize, r: usize) {
        let replica = &mut self.pools[p].replicas[r];
        if replica.state == State::Stopped {
            return;
        }
        replica.busy = false;
        let events = std::mem::take(&mut replica.step_events);
        for event in &events {
            match event {
                Event::Token { id, index, gap } => {
                    let i = *id as usize;
                    let Some(running) = self.running[i].as_mut() else {
                        continue;
                    };
                    if *index == 0 && running.first_token.is_none() {
                        running.first_token = Some(self.now);
                        if let Some(guard) = running.guard.as_mut() {
                            guard
                                .first_byte(Duration::from_secs_f64(self.now - running.dispatched));
                        }
                        let ttft = self.now - self.workload[i].arrival;
                        self.rec.first_token(ttft);
                        self.tallies[p].ttft.push(ttft);
                        if let Some(record) = self.records.get_mut(i) {
                            record.ttft = Some(ttft);
                        }
                    } else if let Some(gap) = gap {
                        self.rec.itl.record(*gap);
                        // The proxy times the gaps between a stream's chunks.
                        if let Some(guard) = running.guard.as_ref() {
                            guard.chunk_gap(Duration::from_secs_f64(*gap));
                        }
                    }
                }
                Event::Finished(f) => {
                    let i = f.id as usize;
                    let Some(running) = self.running[i].take() else {
                        continue;
                    };
                    let arrival = self.workload[i].arrival;
                    let ttft = running.first_token.unwrap_or(self.now) - arrival;
                    self.active -= 1;
                    self.tallies[p].answers += 1;
                    if let Some(record) = self.records.get_mut(i) {
                        record.e2e = Some(self.now - arrival);
                    }
                    self.rec.finished(
                        ttft,
                        self.now - arrival,
                        f.output_tokens,
                        f.prompt_tokens,
                        f.cached_tokens,
                        self.spec.slo,
                    );
                    drop(running.guard);
                    self.after_release(p, r);
                }
                Event::Preempted { .. } => {}
            }
        }
        self.kick(p, r);
        self.release_queue(p);
    }

    /// A request left replica `r`: a draining replica with nothing left from any gateway stops
    /// (its own page shows it idle).
    pub(super) fn after_release(&mut self, p: usize, r: usize) {
        let replica = &self.pools[p].replicas[r];
        let idle = replica.views.iter().all(|v| v.inflight() == 0);
        if replica.state == State::Draining && idle {
            self.stop_replica(p, r);
        }
    }

    /// What each gateway's scraper reads from each replica's `/metrics`.
    pub(super) fn scrape(&mut self, p: usize) {
        let at = self.instant(self.now);
        for replica in &self.pools[p].replicas {
            if !matches!(replica.state, State::Ready | State::Draining) || !replica.scraped {
                continue;
            }
            let s = replica.engine.stats();
            let queries = s.prefix_queries_tokens;
            let stats = crate::replica::EngineStats {
                waiting: s.waiting as f64,
                running: s.running as f64,
                kv_usage: Some(s.kv_usage),
                prefix_hit_rate: (queries > 0)
                    .then(|| s.prefix_hits_tokens as f64 / queries as f64),
                kv_blocks: Some(u64::from(replica.engine.profile().kv_blocks)),
                kv_block_tokens: Some(u64::from(replica.engine.profile().block_size)),
                max_loras: Some(replica.engine.profile().max_loras),
                running_loras: s.running_loras,
                waiting_loras: s.waiting_loras,
            };
            for view in &replica.views {
                view.record_scrape(stats.clone(), at);
            }
        }
        let pool = &self.pools[p];
        for gateway in &pool.gateways {
            gateway.register_prefix_replicas(pool.config.routing.prefix_block_chars);
        }
    }

    /// The gateways read each other's routing state (`peers::routing`): each replica's view
    /// on each gateway gets the others' requests in flight and prefill pending there, and each
    /// gateway's prefix index the prefixes the others sent since the last read.
    pub(super) fn sync_gateways(&mut self, p: usize) {
        let pool = &mut self.pools[p];
        for replica in &pool.replicas {
            let inflight: u64 = replica.views.iter().map(|v| v.inflight()).sum();
            let pending: u64 = replica.views.iter().map(|v| v.pending_prefill()).sum();
            for view in &replica.views {
                view.set_peer_load(inflight - view.inflight(), pending - view.pending_prefill());
            }
        }
        let placed: Vec<Vec<(u64, Vec<u64>)>> = pool
            .gateways
            .iter_mut()
            .map(|g| std::mem::take(&mut g.placed))
            .collect();
        for (from, placed) in placed.iter().enumerate() {
            for (to, gateway) in pool.gateways.iter().enumerate() {
                let Some(index) = gateway.prefix.as_ref().filter(|_| to != from) else {
                    continue;
                };
                for (replica, blocks) in placed {
                    index.record(blocks, *replica);
                }
            }
        }
    }

    pub(super) fn stop_replica(&mut self, p: usize, r: usize) {
        let cut: Vec<usize> = self
            .running
            .iter()
            .enumerate()
            .filter(|(_, x)| x.as_ref().is_some_and(|x| x.pool == p && x.replica == r))
            .map(|(i, _)| i)
            .collect();
        for i in cut {
            self.running[i] = None;
            self.fail(i, Failure::CutByScaleDown);
        }
        let replica = &mut self.pools[p].replicas[r];
        replica.state = State::Stopped;
        replica.stopped = Some(self.now);
        replica.engine = Engine::new(replica.engine.profile().clone());
        replica.step_events.clear();
        self.publish(p);
    }
}
