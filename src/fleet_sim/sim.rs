//! The discrete-event fleet simulation: one run of a workload through a configured fleet in
//! virtual time. The parts that decide are the real ones — the model index and priority
//! lookup, the admission rules ([`admission`]), the router's `pick` over a real [`Snapshot`]
//! of real [`Replica`]s (exact in-flight guards, learned prefill speed, scraped stats with
//! staleness), the pool's prefix index, the scaler's observation, policy and actuation — and
//! each replica is the simulator's engine model (the code behind `infergate sim`). What the real system does over the network happens here as events:
//! arrivals, engine steps, scrapes every `scrape_interval`, scaler ticks, replicas becoming
//! ready after their cold start, drains.
//!
//! Virtual seconds map onto `Instant`s as `epoch + t`, so the router's time-based rules
//! (staleness, ejection) run unchanged.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};

use super::stats::{
    Failure, Recorder, ReplicaReport, RequestRecord, RunReport, Sample, Slo, Summary,
};
use super::workload::Request;
use crate::config::{self, RoutingPolicy, ScalerPolicy};
use crate::pool::admission::{self, Admit, Gate};
use crate::pool::models::ModelIndex;
use crate::replica::{InflightGuard, Replica};
use crate::router::{self, RequestFeatures, Snapshot, prefix::PrefixIndex};
use crate::scaler::actuation::{self, Plan};
use crate::scaler::observation::{self, Beyond};
use crate::scaler::policy::{self, Policy};
use crate::vllm_sim::engine::{Engine, EngineRequest, Event};
use crate::vllm_sim::profile::Profile;

/// How one run differs from the configuration, and what it measures.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub name: String,
    /// Routing policy for every pool (None: as configured).
    pub routing: Option<RoutingPolicy>,
    /// Scaler policy for every pool with a scaler (None: as configured).
    pub scaler: Option<ScalerPolicy>,
}

/// The fleet's shape and the run's limits, shared by every run of a comparison.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Engine profile per pool (index as in the config).
    pub profiles: Vec<Profile>,
    /// Replicas each pool starts with.
    pub initial: Vec<u32>,
    /// Share of each pool's replicas (every k-th) that run `slow_factor` times slower.
    pub slow_fraction: f64,
    pub slow_factor: f64,
    /// Seconds a new replica takes to become ready (None: each pool's `scaler.cold_start`).
    pub cold_start: Option<f64>,
    pub slo: Slo,
    pub seed: u64,
    /// Virtual seconds between timeline points.
    pub sample_every: f64,
    /// Requests still running this long after the last arrival are counted as unfinished.
    pub tail: f64,
    /// Keep a record per request in the report.
    pub keep_requests: bool,
}

/// Called now and then with (virtual seconds done, of total).
pub type Progress<'a> = &'a mut dyn FnMut(f64, f64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Draining,
    Stopped,
}

struct SimReplica {
    replica: Arc<Replica>,
    engine: Engine,
    state: State,
    /// A step is running; its events happen at its end.
    busy: bool,
    step_events: Vec<Event>,
    started: f64,
    stopped: Option<f64>,
    /// Requests sent to it, and seconds its engine was busy.
    served: u64,
    busy_seconds: f64,
    slow: bool,
}

struct SimPool {
    config: config::Pool,
    profile: Profile,
    replicas: Vec<SimReplica>,
    snapshot: Snapshot,
    prefix: Option<PrefixIndex>,
    policy: Option<Box<dyn Policy>>,
    /// One FIFO per priority class, highest first: (request, arrived).
    queue: Vec<VecDeque<usize>>,
    queued: u64,
    sequence: u64,
    /// Longest wait of the requests that left the queue since the scaler's last look.
    max_wait: Option<f64>,
    starting: u32,
    cold_start: f64,
}

impl SimPool {
    /// Budgets of the prefix index from the replicas' scraped KV capacity, as the gateway sets
    /// them (`PoolState::refresh_prefix_budgets`).
    fn register_prefix_replicas(&self) {
        if let Some(index) = &self.prefix {
            index.register(
                &self.snapshot.replicas,
                self.config.routing.prefix_block_chars,
            );
        }
    }

    /// What the pool looks like to a request at `now` (`PoolState::gate`).
    fn gate(&self, now: Instant) -> Gate {
        admission::gate(&self.snapshot, &self.config, now, self.queued)
    }

    /// A request left the queue after `waited` seconds (let in or expired).
    fn left_queue(&mut self, waited: f64) {
        self.queued -= 1;
        self.max_wait = Some(self.max_wait.map_or(waited, |w| w.max(waited)));
    }
}

/// What the gateway knows of a request between its arrival and its dispatch.
#[derive(Clone)]
struct Classified {
    features: RequestFeatures,
    /// The prompt's engine blocks (16 tokens), what the replica's prefix cache sees.
    blocks: Vec<u64>,
    /// The prompt's blocks as the gateway's prefix index cuts them (`prefix_block_chars`).
    indexed: Vec<u64>,
    /// The LoRA adapter the request's model is, by its served name.
    lora: Option<String>,
}

/// The gateway's prefix blocks of a prompt from its engine blocks: `prefix_block_chars`
/// bytes are `k` engine blocks of 16 tokens (64 bytes), and a chained hash names its whole
/// prefix, so every k-th engine block's hash names the gateway block ending there.
fn index_blocks(blocks: &[u64], block_chars: u32) -> Vec<u64> {
    let bytes_per_block = (super::workload::BLOCK_TOKENS as usize) * crate::openai::BYTES_PER_TOKEN;
    let k = (block_chars as usize / bytes_per_block).max(1);
    blocks
        .iter()
        .skip(k - 1)
        .step_by(k)
        .take(router::prefix::MAX_BLOCKS)
        .copied()
        .collect()
}

/// A request between dispatch and its end.
struct Running {
    pool: usize,
    replica: usize,
    guard: Option<InflightGuard>,
    dispatched: f64,
    first_token: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival(usize),
    StepEnd { pool: usize, replica: usize },
    Ready { pool: usize, replica: usize },
    Scrape(usize),
    ScalerTick(usize),
    QueueDeadline { pool: usize, request: usize },
    FirstByteDeadline(usize),
    DrainDeadline { pool: usize, replica: usize },
    Sample,
}

/// Virtual time in nanoseconds (exact ordering; no float comparisons in the heap).
type Tick = u64;

fn ticks(t: f64) -> Tick {
    (t * 1e9).round().max(0.0) as Tick
}

pub struct Fleet<'w> {
    workload: &'w [Request],
    config: &'w config::Config,
    models: ModelIndex,
    spec: &'w FleetSpec,
    epoch: Instant,
    now: f64,
    events: BinaryHeap<Reverse<(Tick, u64, Ev)>>,
    order: u64,
    pools: Vec<SimPool>,
    running: Vec<Option<Running>>,
    /// Per request: (queued at, features, block hashes) while it waits or runs.
    features: Vec<Option<Classified>>,
    queued_at: Vec<f64>,
    rng: super::workload::Rng,
    rec: Recorder,
    timeline: Vec<Sample>,
    scale_ups: u32,
    scale_downs: u32,
    max_replicas: u32,
    /// Requests that have arrived, and those of them not ended yet.
    arrived: usize,
    active: usize,
    /// Per request, when kept.
    records: Vec<RequestRecord>,
}

/// Runs `workload` through the fleet `config` describes, changed by `run`.
pub fn run(
    config: &config::Config,
    spec: &FleetSpec,
    run: &RunSpec,
    workload: &[Request],
    progress: Progress<'_>,
) -> RunReport {
    let wall = Instant::now();
    let mut fleet = Fleet::new(config, spec, run, workload);
    let limit = workload.last().map_or(0.0, |r| r.arrival) + spec.tail;
    let end = fleet.run_until(limit, progress);
    fleet.report(run, end, wall.elapsed().as_secs_f64())
}

impl<'w> Fleet<'w> {
    fn new(
        config: &'w config::Config,
        spec: &'w FleetSpec,
        run: &RunSpec,
        workload: &'w [Request],
    ) -> Self {
        let pools = config
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut pool = p.clone();
                if let Some(policy) = run.routing {
                    pool.routing.policy = policy;
                }
                if let Some(policy) = run.scaler {
                    pool.scaler.policy = policy;
                    // Compared as their users run them: the HPA controller syncs every 15 s,
                    // Knative's autoscaler ticks every 2 s.
                    match policy {
                        ScalerPolicy::Hpa => pool.scaler.interval = Duration::from_secs(15),
                        ScalerPolicy::Kpa => pool.scaler.interval = Duration::from_secs(2),
                        ScalerPolicy::Infergate => {}
                    }
                }
                let prefix = matches!(
                    pool.routing.policy,
                    RoutingPolicy::PrefixAffinity
                        | RoutingPolicy::PredictedTtft
                        | RoutingPolicy::Weighted
                )
                .then(|| PrefixIndex::new(pool.routing.prefix_cache_entries as usize));
                SimPool {
                    policy: pool.scaler.enabled.then(|| policy::build(&pool.scaler)),
                    cold_start: spec
                        .cold_start
                        .unwrap_or(pool.scaler.cold_start.as_secs_f64()),
                    queue: (0..config.classification.priority_classes.len().max(1))
                        .map(|_| VecDeque::new())
                        .collect(),
                    profile: spec.profiles[i].clone(),
                    config: pool,
                    replicas: Vec::new(),
                    snapshot: Snapshot::default(),
                    prefix,
                    queued: 0,
                    sequence: 0,
                    max_wait: None,
                    starting: 0,
                }
            })
            .collect();
        let mut fleet = Self {
            workload,
            config,
            models: ModelIndex::new(&config.pools),
            spec,
            epoch: Instant::now(),
            now: 0.0,
            events: BinaryHeap::new(),
            order: 0,
            pools,
            running: (0..workload.len()).map(|_| None).collect(),
            features: vec![None; workload.len()],
            queued_at: vec![0.0; workload.len()],
            rng: super::workload::Rng::new(spec.seed),
            rec: Recorder::default(),
            timeline: Vec::new(),
            scale_ups: 0,
            scale_downs: 0,
            max_replicas: 0,
            arrived: 0,
            active: 0,
            records: if spec.keep_requests {
                workload
                    .iter()
                    .map(|r| RequestRecord {
                        arrival: r.arrival,
                        ..Default::default()
                    })
                    .collect()
            } else {
                Vec::new()
            },
        };
        for p in 0..fleet.pools.len() {
            for _ in 0..spec.initial[p] {
                let r = fleet.add_replica(p);
                fleet.make_ready(p, r);
            }
            let pool = &fleet.pools[p].config;
            let (scrape, interval) = (pool.metrics.scrape_interval, pool.scaler.interval);
            fleet.at(scrape.as_secs_f64(), Ev::Scrape(p));
            if fleet.pools[p].policy.is_some() {
                fleet.at(interval.as_secs_f64(), Ev::ScalerTick(p));
            }
        }
        if let Some(first) = workload.first() {
            fleet.at(first.arrival, Ev::Arrival(0));
        }
        fleet.at(spec.sample_every, Ev::Sample);
        fleet
    }

    fn at(&mut self, t: f64, ev: Ev) {
        self.order += 1;
        self.events.push(Reverse((ticks(t), self.order, ev)));
    }

    fn instant(&self, t: f64) -> Instant {
        self.epoch + Duration::from_secs_f64(t.max(0.0))
    }

    /// Runs events until `end`, or until every request has ended (whichever comes first);
    /// returns the time the run stopped.
    fn run_until(&mut self, end: f64, progress: Progress<'_>) -> f64 {
        let report_every = (end / 100.0).max(1.0);
        let mut next_report = report_every;
        while let Some(Reverse((tick, _, ev))) = self.events.pop() {
            let t = tick as f64 / 1e9;
            if t > end {
                break;
            }
            self.now = t;
            if self.all_done() {
                break;
            }
            if t >= next_report {
                progress(t, end);
                next_report = t + report_every;
            }
            self.handle(ev);
        }
        let end = if self.all_done() { self.now } else { end };
        self.now = end;
        progress(end, end);
        // What is still queued or running did not finish in time.
        let unfinished = self.running.iter().filter(|r| r.is_some()).count()
            + self.pools.iter().map(|p| p.queued as usize).sum::<usize>();
        for _ in 0..unfinished {
            self.rec.fail(Failure::Unfinished);
        }
        for pool in &mut self.pools {
            for r in &mut pool.replicas {
                if r.stopped.is_none() {
                    r.stopped = Some(end);
                }
            }
        }
        end
    }

    /// Every request has arrived and ended.
    fn all_done(&self) -> bool {
        self.arrived == self.workload.len() && self.active == 0
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrival(i) => {
                if let Some(next) = self.workload.get(i + 1) {
                    self.at(next.arrival, Ev::Arrival(i + 1));
                }
                self.arrive(i);
            }
            Ev::StepEnd { pool, replica } => self.step_end(pool, replica),
            Ev::Ready { pool, replica } => {
                if self.pools[pool].replicas[replica].state == State::Starting {
                    self.pools[pool].starting -= 1;
                    self.make_ready(pool, replica);
                    self.release_queue(pool);
                }
            }
            Ev::Scrape(pool) => {
                self.scrape(pool);
                self.release_queue(pool);
                let every = self.pools[pool]
                    .config
                    .metrics
                    .scrape_interval
                    .as_secs_f64();
                self.at(self.now + every, Ev::Scrape(pool));
            }
            Ev::ScalerTick(pool) => {
                self.scale(pool);
                let every = self.pools[pool].config.scaler.interval.as_secs_f64();
                self.at(self.now + every, Ev::ScalerTick(pool));
            }
            Ev::QueueDeadline { pool, request } => self.expire(pool, request),
            Ev::FirstByteDeadline(request) => {
                let late = self.running[request]
                    .as_ref()
                    .is_some_and(|r| r.first_token.is_none());
                if late {
                    let r = self.running[request].take().expect("checked");
                    self.pools[r.pool].replicas[r.replica]
                        .engine
                        .abort(request as u64);
                    self.fail(request, Failure::FirstByteTimeout);
                    self.after_release(r.pool, r.replica);
                }
            }
            Ev::DrainDeadline { pool, replica } => {
                if self.pools[pool].replicas[replica].state == State::Draining {
                    self.stop_replica(pool, replica);
                }
            }
            Ev::Sample => {
                self.sample();
                self.at(self.now + self.spec.sample_every, Ev::Sample);
            }
        }
    }

    fn add_replica(&mut self, p: usize) -> usize {
        let pool = &mut self.pools[p];
        let n = pool.replicas.len();
        let authority: Authority = format!("{}-{n}.sim:80", pool.config.name)
            .parse()
            .unwrap_or_else(|_| Authority::from_static("replica.sim:80"));
        let gauge = prometheus::IntGauge::new("infergate_sim_inflight", "in flight")
            .expect("a valid metric name");
        let replica = Arc::new(Replica::new(Scheme::HTTP, authority, gauge, self.epoch));
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
        pool.replicas.push(SimReplica {
            replica,
            engine: Engine::new(profile),
            state: State::Starting,
            busy: false,
            step_events: Vec::new(),
            started: self.now,
            stopped: None,
            served: 0,
            busy_seconds: 0.0,
            slow,
        });
        n
    }

    fn make_ready(&mut self, p: usize, r: usize) {
        self.pools[p].replicas[r].state = State::Ready;
        self.publish(p);
    }

    /// Rebuilds the pool's routing snapshot from its ready replicas (as discovery does).
    fn publish(&mut self, p: usize) {
        let pool = &mut self.pools[p];
        let ready: Vec<Arc<Replica>> = pool
            .replicas
            .iter()
            .filter(|r| r.state == State::Ready)
            .map(|r| r.replica.clone())
            .collect();
        let live = pool
            .replicas
            .iter()
            .filter(|r| r.state != State::Stopped)
            .count() as u32;
        self.max_replicas = self.max_replicas.max(live);
        pool.snapshot = Snapshot::new(ready);
        pool.register_prefix_replicas();
    }

    /// A request ended without an answer.
    fn fail(&mut self, i: usize, why: Failure) {
        self.features[i] = None;
        self.active -= 1;
        self.rec.fail(why);
        if let Some(record) = self.records.get_mut(i) {
            record.failure = Some(why);
        }
    }

    fn arrive(&mut self, i: usize) {
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
    fn admit(&mut self, p: usize, i: usize, priority: usize) {
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
    fn release_queue(&mut self, p: usize) {
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

    fn expire(&mut self, p: usize, i: usize) {
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
    fn dispatch(&mut self, p: usize, i: usize) {
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

    /// Starts the replica's next engine step if it is idle and has work.
    fn kick(&mut self, p: usize, r: usize) {
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

    fn step_end(&mut self, p: usize, r: usize) {
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

    /// A request left replica `r`: a draining replica with nothing left stops.
    fn after_release(&mut self, p: usize, r: usize) {
        let replica = &self.pools[p].replicas[r];
        if replica.state == State::Draining && replica.replica.inflight() == 0 {
            self.stop_replica(p, r);
        }
    }

    /// What the pool's scraper reads from each replica's `/metrics`.
    fn scrape(&mut self, p: usize) {
        let at = self.instant(self.now);
        for replica in &self.pools[p].replicas {
            if !matches!(replica.state, State::Ready | State::Draining) {
                continue;
            }
            let s = replica.engine.stats();
            let queries = s.prefix_queries_tokens;
            replica.replica.record_scrape(
                crate::replica::EngineStats {
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
                },
                at,
            );
        }
        self.pools[p].register_prefix_replicas();
    }

    /// One tick of the scaler's control loop (`scaler::spawn`) in virtual time.
    fn scale(&mut self, p: usize) {
        let now = self.instant(self.now);
        let pool = &mut self.pools[p];
        let beyond = Beyond {
            now_secs: self.now,
            starting: pool.starting,
            queued: pool.queued,
            queue_wait: pool.max_wait.take(),
        };
        let obs = observation::observe(&pool.snapshot, &pool.config, now, beyond);
        let Some(policy) = pool.policy.as_mut() else {
            return;
        };
        let rec = policy.recommend(&obs);
        let ready: Vec<usize> = (0..pool.replicas.len())
            .filter(|&r| pool.replicas[r].state == State::Ready)
            .collect();
        let inflight: Vec<u64> = ready
            .iter()
            .map(|&r| pool.replicas[r].replica.inflight())
            .collect();
        match actuation::plan(rec.desired, obs.ready, obs.starting, &inflight) {
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
    fn drain(&mut self, p: usize, r: usize) {
        self.pools[p].replicas[r].state = State::Draining;
        self.publish(p);
        if self.pools[p].replicas[r].replica.inflight() == 0 {
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

    fn stop_replica(&mut self, p: usize, r: usize) {
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

    fn sample(&mut self) {
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
                .map(|r| r.replica.inflight())
                .sum(),
            queued: self.pools.iter().map(|p| p.queued).sum(),
            arrival_rate: self.rec.window_arrivals as f64 / self.spec.sample_every,
            ttft_p50: (summary.count > 0).then_some(summary.p50),
            ttft_p90: (summary.count > 0).then_some(summary.p90),
        };
        self.rec.window_arrivals = 0;
        self.timeline.push(sample);
    }

    fn report(mut self, run: &RunSpec, end: f64, wall_seconds: f64) -> RunReport {
        let replica_seconds = self
            .pools
            .iter()
            .flat_map(|p| &p.replicas)
            .map(|r| r.stopped.unwrap_or(end) - r.started)
            .sum();
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
            routing: describe(&|p| super::policy_name(&p.routing.policy)),
            scaler: describe(&|p| {
                if p.scaler.enabled {
                    super::policy_name(&p.scaler.policy)
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
            replica_seconds,
            scale_ups: self.scale_ups,
            scale_downs: self.scale_downs,
            max_replicas: self.max_replicas,
            duration: end,
            wall_seconds,
            timeline: std::mem::take(&mut self.timeline),
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
                            requests: r.served,
                            busy: r.busy_seconds / (r.stopped.unwrap_or(end) - r.started).max(1e-9),
                        })
                })
                .collect(),
        }
    }
}
