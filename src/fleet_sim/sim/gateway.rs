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
        if let Some(record) = self.records.get_mut(i) {
            record.failure = Some(why);
        }
    }

    pub(super) fn arrive(&mut self, i: usize) {
        self.arrived += 1;
        self.active += 1;
        self.rec.window_arrivals += 1;
        let request = &self.workload[i];
        let route = match &request.model {
            None => Some((0, None)),
            Some(model) => self.models.lookup(model).map(|(_, route)| {
                let served = route.rewrite_to.as_ref().unwrap_or(&route.model);
                (route.pool, route.adapter.map(|a| (a, served.clone())))
            }),
        };
        let Some((p, adapter)) = route else {
            self.fail(i, Failure::UnknownModel);
            return;
        };
        if request.prompt_tokens + request.output_tokens > self.pools[p].profile.max_model_len {
            self.fail(i, Failure::TooLong);
            return;
        }
        let priority = self
            .config
            .classification
            .priority_of(request.priority.as_deref());
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
            prefix: self.pools[p]
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

    /// Admission in virtual time, by the gateway's rules (`gateway::proxy::admit`).
    pub(super) fn admit(&mut self, p: usize, i: usize, priority: usize) {
        let now = self.instant(self.now);
        let gate = self.pools[p].gate(now);
        let sheddable = self.config.classification.is_sheddable(priority);
        match admission::on_arrival(gate, sheddable) {
            Admit::Go => return self.dispatch(p, i),
            Admit::Shed => return self.fail(i, Failure::Shed),
            Admit::Queue => {}
        }
        let pool = &mut self.pools[p];
        if !admission::has_room(pool.queued, u64::from(pool.config.admission.max_queue)) {
            self.fail(i, Failure::QueueFull);
            return;
        }
        let class = priority.min(pool.queue.len() - 1);
        pool.queue[class].push_back(i);
        pool.queued += 1;
        self.queued_at[i] = self.now;
        let deadline =
            self.workload[i].arrival + pool.config.admission.max_queue_wait.as_secs_f64();
        self.at(
            deadline,
            Ev::QueueDeadline {
                pool: p,
                request: i,
            },
        );
    }

    /// Lets queued requests go, highest class first, while the pool has room.
    pub(super) fn release_queue(&mut self, p: usize) {
        while self.pools[p].queued > 0 {
            let now = self.instant(self.now);
            if !admission::may_release(self.pools[p].gate(now)) {
                return;
            }
            let pool = &mut self.pools[p];
            let waiting = pool.queue.iter().map(|class| class.len() as u64);
            let Some(class) = admission::class_to_release(waiting) else {
                return;
            };
            let i = pool.queue[class].pop_front().expect("a class with waiters");
            pool.left_queue(self.now - self.queued_at[i]);
            self.dispatch(p, i);
        }
    }

    pub(super) fn expire(&mut self, p: usize, i: usize) {
        let pool = &mut self.pools[p];
        for class in &mut pool.queue {
            if let Some(at) = class.iter().position(|&q| q == i) {
                class.remove(at);
                pool.left_queue(self.now - self.queued_at[i]);
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
        let pool = &mut self.pools[p];
        pool.sequence += 1;
        let ctx = crate::pool::pick_context(&pool.config, now, random, pool.sequence);
        let Some(index) = router::pick(&pool.config.routing, &pool.snapshot, &features, ctx, &[])
        else {
            self.fail(i, Failure::NoReplica);
            return;
        };
        let replica = pool.snapshot.replicas[index].clone();
        let r = pool
            .replicas
            .iter()
            .position(|s| Arc::ptr_eq(&s.replica, &replica))
            .expect("snapshot replicas are pool replicas");
        let guard = replica.start_request_with(router::own_prefill_tokens(&features, replica.id));
        pool.replicas[r].served += 1;
        if let Some(index) = &pool.prefix {
            index.record(&indexed, replica.id);
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
