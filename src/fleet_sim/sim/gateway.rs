//! The gateway's part in virtual time: a request's arrival (model and priority lookup,
//! classification), admission by the gateway's rules, the queue, and dispatch through the real
//! router to a replica's engine.

use std::sync::Arc;

use super::{Classified, Ev, Fleet, Running, index_blocks};
use crate::fleet_sim::stats::Failure;
use crate::pool::admission::{self, Admit};
use crate::router::{self, RequestFeatures};
use crate::vllm_sim::engine::EngineRequest;

impl Fleet<'_> {
    /// A request ended without an answer.
    pub(super) fn fail(&mut self, i: usize, why: Failure) {
        self.features[i] = None;
        self.active -= 1;
        self.rec.fail(why);
        if let Some(p) = self.routed[i] {
            let tally = &mut self.tallies[p as usize];
            tally.answers += 1;
            tally.failed += 1;
        }
        if let Some(record) = self.records.get_mut(i) {
            record.failure = Some(why);
        }
    }

    pub(super) fn arrive(&mut self, i: usize) {
        self.arrived += 1;
        self.active += 1;
        self.rec.window_arrivals += 1;
        let request = &self.workload[i];
        let route = match request.model.as_ref().map(|m| self.models.lookup(m)) {
            None => Some((0, None)),
            Some(None) => None,
            // A tier's pool as the gateway chooses it.
            Some(Some((_, route))) if route.tier.is_some() => {
                let tier = route.tier.as_ref().expect("matched");
                Some((self.tier_member(tier, i), None))
            }
            Some(Some((_, route))) => {
                let served = route.rewrite_to.as_ref().unwrap_or(&route.model);
                // A split's version as the gateway draws it; a session stands in for the
                // sticky header.
                let pool = route.split.as_ref().map_or(route.pool, |split| {
                    let sticky = split.sticky_header.as_ref().and(request.session.as_deref());
                    // Drawn only for a split: other runs keep their random sequence.
                    split
                        .choose(None, sticky.map(str::as_bytes), self.rng.next_u64())
                        .map_or(route.pool, |v| v.pool)
                });
                Some((pool, route.adapter.map(|a| (a, served.clone()))))
            }
        };
        let Some((p, adapter)) = route else {
            self.fail(i, Failure::UnknownModel);
            return;
        };
        self.routed[i] = Some(p as u32);
        if request.prompt_tokens + request.output_tokens > self.pools[p].profile.max_model_len {
            self.fail(i, Failure::TooLong);
            return;
        }
        let priority = self
            .config
            .classification
            .priority_of(request.priority.as_deref());
        let g = request.gateway(i, self.pools[p].gateways.len());
        self.via[i] = g as u32;
        let blocks = request.block_hashes();
        let indexed = index_blocks(&blocks, self.pools[p].config.routing.prefix_block_chars);
        let features = RequestFeatures {
            stream: true,
            prompt_tokens: request.prompt_tokens,
            max_tokens: Some(request.output_tokens),
            priority,
            session: request
                .session
                .as_ref()
                .map(|s| crate::openai::fnv1a(s.as_bytes())),
            prefix: self.pools[p].gateways[g]
                .prefix
                .as_ref()
                .map(|index| index.lookup(&indexed))
                .unwrap_or_default(),
            adapter: adapter.as_ref().map(|(id, _)| *id),
        };
        self.features[i] = Some(Classified {
            features,
            blocks,
            indexed,
            lora: adapter.map(|(_, served)| served),
        });
        self.admit(p, i, priority);
    }

    /// The pool of a tier that takes request `i`, as its gateway sees the pools
    /// (`Pools::tier_member`).
    fn tier_member(&self, tier: &crate::pool::models::TierRoute, i: usize) -> usize {
        let request = &self.workload[i];
        let now = self.instant(self.now);
        let members: Vec<crate::pool::tiers::Member> = tier
            .members
            .iter()
            .map(|&(p, _)| {
                let pool = &self.pools[p];
                let gateway = &pool.gateways[request.gateway(i, pool.gateways.len())];
                crate::pool::tiers::Member::seen(
                    &gateway.snapshot.replicas,
                    gateway.queued,
                    pool.starting,
                    &pool.config.scaler,
                    request.prompt_tokens + request.output_tokens <= pool.profile.max_model_len,
                    now,
                )
            })
            .collect();
        tier.members[crate::pool::tiers::choose(&members).unwrap_or(0)].0
    }

    /// Admission in virtual time on the request's gateway, by the gateway's rules
    /// (`PoolState::admit`).
    pub(super) fn admit(&mut self, p: usize, i: usize, priority: usize) {
        let now = self.instant(self.now);
        let g = self.via[i] as usize;
        self.pools[p].gateways[g].arrivals += 1;
        let gate = self.pools[p].gate(g, now);
        let sheddable = self.config.classification.is_sheddable(priority);
        match admission::on_arrival(gate, sheddable) {
            Admit::Go => return self.dispatch(p, i),
            Admit::Shed => return self.fail(i, Failure::Shed),
            Admit::Queue => {}
        }
        let pool = &mut self.pools[p];
        let max_queue = admission::queue_bound(&pool.config.admission, pool.coming);
        let gateway = &mut pool.gateways[g];
        if !admission::has_room(gateway.queued, max_queue) {
            self.fail(i, Failure::QueueFull);
            return;
        }
        let class = priority.min(gateway.queue.len() - 1);
        gateway.queue[class].push_back(i);
        gateway.queued += 1;
        self.queued_at[i] = self.now;
        let deadline = self.queue_deadline(p, i);
        self.at(
            deadline,
            Ev::QueueDeadline {
                pool: p,
                request: i,
            },
        );
    }

    /// A queued request's deadline by the gateway's rule ([`admission::deadline`]), in
    /// virtual seconds.
    fn queue_deadline(&self, p: usize, i: usize) -> f64 {
        let pool = &self.pools[p];
        let received = self.instant(self.workload[i].arrival);
        let due = admission::deadline(&pool.config.admission, received, pool.coming);
        due.saturating_duration_since(self.epoch).as_secs_f64()
    }

    /// Lets queued requests go on every gateway, highest class first, while the pool has room
    /// as that gateway sees it.
    pub(super) fn release_queue(&mut self, p: usize) {
        for g in 0..self.pools[p].gateways.len() {
            self.release_gateway_queue(p, g);
        }
    }

    fn release_gateway_queue(&mut self, p: usize, g: usize) {
        while self.pools[p].gateways[g].queued > 0 {
            let now = self.instant(self.now);
            if !admission::may_release(self.pools[p].gate(g, now)) {
                return;
            }
            let gateway = &mut self.pools[p].gateways[g];
            let waiting = gateway.queue.iter().map(|class| class.len() as u64);
            let Some(class) = admission::class_to_release(waiting) else {
                return;
            };
            let i = gateway.queue[class]
                .pop_front()
                .expect("a class with waiters");
            gateway.left_queue(self.now - self.queued_at[i]);
            self.dispatch(p, i);
        }
    }

    pub(super) fn expire(&mut self, p: usize, i: usize) {
        let gateway = &self.pools[p].gateways[self.via[i] as usize];
        if !gateway.queue.iter().any(|class| class.contains(&i)) {
            return; // let in already
        }
        // Replicas that started since it queued move its deadline, as the gateway re-reads it
        // (a microsecond's slack for the clock conversions).
        let deadline = self.queue_deadline(p, i);
        if deadline > self.now + 1e-6 {
            self.at(
                deadline,
                Ev::QueueDeadline {
                    pool: p,
                    request: i,
                },
            );
            return;
        }
        let gateway = &mut self.pools[p].gateways[self.via[i] as usize];
        for class in &mut gateway.queue {
            if let Some(at) = class.iter().position(|&q| q == i) {
                class.remove(at);
                gateway.left_queue(self.now - self.queued_at[i]);
                self.fail(i, Failure::QueueTimeout);
                return;
            }
        }
    }

    /// Picks a replica with the real router and hands the request to its engine.
    pub(super) fn dispatch(&mut self, p: usize, i: usize) {
        let Some(Classified {
            features,
            blocks,
            indexed,
            lora,
        }) = self.features[i].take()
        else {
            return;
        };
        let now = self.instant(self.now);
        let random = self.rng.next_u64();
        let g = self.via[i] as usize;
        let pool = &mut self.pools[p];
        let gateway = &mut pool.gateways[g];
        gateway.sequence += 1;
        let ctx = crate::pool::pick_context(&pool.config, now, random, gateway.sequence);
        let routing = &pool.config.routing;
        let Some(index) = router::pick(routing, &gateway.snapshot, &features, ctx, &[]) else {
            self.fail(i, Failure::NoReplica);
            return;
        };
        let replica = gateway.snapshot.replicas[index].clone();
        let r = pool
            .replicas
            .iter()
            .position(|s| Arc::ptr_eq(&s.views[g], &replica))
            .expect("snapshot replicas are pool replicas");
        let guard = replica.start_request_with(router::own_prefill_tokens(&features, replica.id));
        pool.replicas[r].served += 1;
        // `sim --fail-rate`: the replica answers 500 at once; the gateway counts it against
        // the replica (`PoolState::record_failure`).
        if pool.fail_rate > 0.0 && self.rng.unit() < pool.fail_rate {
            let retries = &pool.config.retries;
            let ejection_ms = retries.ejection_time.as_millis() as u64;
            replica.record_failure(now, retries.eject_after_failures, ejection_ms);
            drop(guard);
            self.fail(i, Failure::ServerError);
            return self.after_release(p, r);
        }
        if let Some(index) = &pool.gateways[g].prefix {
            index.record(&indexed, replica.id);
            if self.spec.sync_interval.is_some() && pool.gateways.len() > 1 {
                pool.gateways[g].placed.push((replica.id, indexed.clone()));
            }
        }
        let request = &self.workload[i];
        pool.replicas[r].engine.submit(
            EngineRequest {
                id: i as u64,
                prompt_tokens: request.prompt_tokens,
                block_hashes: blocks,
                output_tokens: request.output_tokens,
                lora,
            },
            self.now,
        );
        let first_byte = pool.config.timeouts.first_byte.as_secs_f64();
        if let Some(record) = self.records.get_mut(i) {
            record.replica = Some((p, r));
        }
        self.running[i] = Some(Running {
            pool: p,
            replica: r,
            guard: Some(guard),
            dispatched: self.now,
            first_token: None,
        });
        self.at(self.now + first_byte, Ev::FirstByteDeadline(i));
        self.kick(p, r);
    }
}
