//! What a run reports: the timeline samples and the summary at its end.

use super::{Fleet, RunSpec, SimPool, State};
use crate::config;
use crate::fleet_sim::stats::{ReplicaReport, RunReport, Sample, Summary};

impl Fleet<'_> {
    pub(super) fn sample(&mut self) {
        let count = |s: State| {
            self.pools
                .iter()
                .flat_map(|p| &p.replicas)
                .filter(|r| r.state == s)
                .count() as u32
        };
        let mut window = std::mem::take(&mut self.rec.window_ttft);
        let summary = Summary::of(&mut window);
        let sample = Sample {
            t: self.now,
            ready: count(State::Ready),
            starting: count(State::Starting),
            draining: count(State::Draining),
            inflight: self
                .pools
                .iter()
                .flat_map(|p| &p.replicas)
                .flat_map(|r| &r.views)
                .map(|v| v.inflight())
                .sum(),
            queued: self
                .pools
                .iter()
                .flat_map(|p| &p.gateways)
                .map(|g| g.queued)
                .sum(),
            arrival_rate: self.rec.window_arrivals as f64 / self.spec.sample_every,
            completion_rate: self.rec.window_completions as f64 / self.spec.sample_every,
            ttft_p50: (summary.count > 0).then_some(summary.p50),
            ttft_p90: (summary.count > 0).then_some(summary.p90),
            canary_weight: self.canary_weight(),
        };
        self.rec.window_arrivals = 0;
        self.rec.window_completions = 0;
        self.timeline.push(sample);
    }

    pub(super) fn report(mut self, run: &RunSpec, end: f64, wall_seconds: f64) -> RunReport {
        let seconds_of = |p: &SimPool| -> f64 {
            p.replicas
                .iter()
                .map(|r| r.stopped.unwrap_or(end) - r.started)
                .sum()
        };
        let replica_seconds = self.pools.iter().map(seconds_of).sum();
        let cost = self
            .pools
            .iter()
            .map(|p| Some(seconds_of(p) / 3600.0 * p.config.scaler.replica_cost_per_hour?))
            .sum::<Option<f64>>();
        let span = self.workload.last().map_or(0.0, |r| r.arrival).max(1e-9);
        let rec = &mut self.rec;
        let requests = self.workload.len();
        let describe = |f: &dyn Fn(&config::Pool) -> String| {
            let mut names: Vec<String> = self.pools.iter().map(|p| f(&p.config)).collect();
            names.dedup();
            names.join("+")
        };
        RunReport {
            name: run.name.clone(),
            routing: describe(&|p| crate::config::yaml_name(&p.routing.policy)),
            scaler: describe(&|p| {
                if p.scaler.enabled {
                    crate::config::yaml_name(&p.scaler.policy)
                } else {
                    "off".to_string()
                }
            }),
            requests,
            completed: rec.completed,
            failed: rec.failed.clone(),
            ttft: Summary::of(&mut rec.ttft),
            itl: rec.itl.summary(),
            e2e: Summary::of(&mut rec.e2e),
            throughput: rec.output_tokens as f64 / span,
            slo: self.spec.slo,
            slo_attainment: rec.good_requests as f64 / requests.max(1) as f64,
            goodput: rec.good_tokens as f64 / span,
            prefix_cache_hit_rate: rec.cached_tokens as f64 / rec.prompt_tokens.max(1) as f64,
            preemptions: self
                .pools
                .iter()
                .flat_map(|p| &p.replicas)
                .map(|r| r.engine.stats().preemptions)
                .sum(),
            replica_seconds,
            cost,
            scale_ups: self.scale_ups,
            scale_downs: self.scale_downs,
            max_replicas: self.max_replicas,
            duration: end,
            wall_seconds,
            timeline: std::mem::take(&mut self.timeline),
            rollout: std::mem::take(&mut self.rollout_events),
            per_request: std::mem::take(&mut self.records),
            replicas: self
                .pools
                .iter()
                .enumerate()
                .flat_map(|(p, pool)| {
                    pool.replicas
                        .iter()
                        .enumerate()
                        .map(move |(i, r)| ReplicaReport {
                            pool: p,
                            index: i,
                            slow: r.slow,
                            scraped: r.scraped,
                            requests: r.served,
                            busy: r.busy_seconds / (r.stopped.unwrap_or(end) - r.started).max(1e-9),
                        })
                })
                .collect(),
        }
    }
}
