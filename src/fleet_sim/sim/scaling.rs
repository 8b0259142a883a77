//! The scaler in virtual time: each tick observes the pool, asks the policy and acts on the
//! plan with the same code as the control loop and the local provider.

use super::{Ev, Fleet, State};
use crate::peers::PoolLoad;
use crate::scaler::actuation::{self, Plan};
use crate::scaler::observation::{self, Beyond};
use crate::scaler::policy::Observation;

impl Fleet<'_> {
    /// One tick of the scaler's control loop (`scaler::spawn`) in virtual time, on the first
    /// gateway (the one acting), which reads its peers' own in-flight and queued counts as it
    /// would from their pages; for a tier, one decision for all its pools.
    pub(super) fn scale(&mut self, p: usize) {
        let members = self.pools[p]
            .tier
            .as_ref()
            .map_or_else(|| vec![p], |(members, _)| members.clone());
        let observations: Vec<Observation> = members.iter().map(|&m| self.observe(m)).collect();
        let pool = &mut self.pools[p];
        let counts = match (&mut pool.tier, &mut pool.policy) {
            (Some((_, scaler)), _) => scaler.decide(&observations).1,
            (None, Some(policy)) => vec![policy.recommend(&observations[0]).desired],
            (None, None) => return,
        };
        for ((&m, n), obs) in members.iter().zip(counts).zip(&observations) {
            self.actuate(m, n, obs);
        }
    }

    /// The scaler's observation of pool `p` (`scaler::spawn`'s), telling the pool what is
    /// coming.
    fn observe(&mut self, p: usize) -> Observation {
        let now = self.instant(self.now);
        let pool = &mut self.pools[p];
        let (first, others) = pool
            .gateways
            .split_first_mut()
            .expect("one gateway at least");
        let mut peers = PoolLoad::default();
        for peer in others.iter() {
            peers.inflight += peer
                .snapshot
                .replicas
                .iter()
                .map(|r| r.inflight())
                .sum::<u64>();
            peers.queued += peer.queued;
        }
        let beyond = Beyond {
            now_secs: self.now,
            starting: pool.starting,
            queued: first.queued,
            queue_wait: first.max_wait.take(),
            peers,
            cold_start: pool.cold_starts.expected().as_secs_f64(),
            arrivals: std::mem::take(&mut first.arrivals),
            // The history's days start with the workload.
            clock_start: 0.0,
        };
        let obs = observation::observe(&first.snapshot, &pool.config, now, beyond);
        pool.coming = pool.cold_starts.observe(now, obs.starting);
        obs
    }

    /// Acts on `desired` as the local provider does ([`actuation::plan`]): starts replicas,
    /// ready after the cold start, or drains the least busy.
    pub(super) fn actuate(&mut self, p: usize, desired: u32, obs: &Observation) {
        let pool = &self.pools[p];
        let ready: Vec<usize> = (0..pool.replicas.len())
            .filter(|&r| pool.replicas[r].state == State::Ready)
            .collect();
        // The acting gateway chooses by its own counts, as the providers do.
        let inflight: Vec<u64> = ready
            .iter()
            .map(|&r| pool.replicas[r].views[0].inflight())
            .collect();
        match actuation::plan(desired, obs.ready, obs.starting, &inflight) {
            Plan::Hold => {}
            Plan::Add(n) => {
                self.scale_ups += 1;
                for _ in 0..n {
                    let r = self.add_replica(p);
                    self.pools[p].starting += 1;
                    let ready_at = self.now + self.pools[p].cold_start;
                    self.at(
                        ready_at,
                        Ev::Ready {
                            pool: p,
                            replica: r,
                        },
                    );
                }
                self.publish(p);
            }
            Plan::Drain(victims) => {
                self.scale_downs += 1;
                for v in victims {
                    self.drain(p, ready[v]);
                }
            }
        }
    }

    /// Takes replica `r` out of routing; it stops once its answers end (or at the drain
    /// timeout), as the local provider drains it.
    pub(super) fn drain(&mut self, p: usize, r: usize) {
        self.pools[p].replicas[r].state = State::Draining;
        self.publish(p);
        if self.pools[p].replicas[r]
            .views
            .iter()
            .all(|v| v.inflight() == 0)
        {
            self.stop_replica(p, r);
        } else {
            let drain = self.pools[p].config.scaler.drain_timeout.as_secs_f64();
            self.at(
                self.now + drain,
                Ev::DrainDeadline {
                    pool: p,
                    replica: r,
                },
            );
        }
    }
}
