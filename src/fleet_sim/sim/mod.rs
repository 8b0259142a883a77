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

use super::stats::{Failure, Recorder, RequestRecord, RunReport, Sample, Slo};
use super::workload::Request;

mod gateway;
#[cfg(test)]
mod parity;
mod replicas;
mod report;
mod rollout;
mod scaling;
use crate::config::{self, RoutingPolicy, ScalerPolicy};
use crate::pool::admission::{self, Gate};
use crate::pool::models::ModelIndex;
use crate::replica::{InflightGuard, Replica};
use crate::router::{self, RequestFeatures, Snapshot, prefix::PrefixIndex};
use crate::scaler::policy::{self, Policy};
use crate::vllm_sim::engine::{Engine, Event};
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
    /// Per pool, the share of requests its replicas answer with a 500 at once (a local
    /// pool's `sim --fail-rate`).
    pub fail_rates: Vec<f64>,
    /// Replicas each pool starts with.
    pub initial: Vec<u32>,
    /// Share of each pool's replicas (every k-th) that run `slow_factor` times slower.
    pub slow_fraction: f64,
    pub slow_factor: f64,
    /// Share of each pool's replicas (every k-th, from the first) that publish no metrics.
    pub unscraped_fraction: f64,
    /// Seconds a new replica takes to become ready (None: each pool's `scaler.cold_start`).
    pub cold_start: Option<f64>,
    /// Virtual seconds of the scalers' first tick (None: one `scaler.interval`).
    pub scaler_phase: Option<f64>,
    pub slo: Slo,
    pub seed: u64,
    /// Virtual seconds between timeline points.
    pub sample_every: f64,
    /// Requests still running this long after the last arrival are counted as unfinished.
    pub tail: f64,
    /// Keep a record per request in the report.
    pub keep_requests: bool,
    /// Gateway replicas in front of the fleet (at least 1), each with its own routing state,
    /// in-flight counts, prefix index and queue; a request goes to one by its session (as a
    /// client's keep-alive connection stays on one), else in turn. The first one scales, on
    /// its own load and its peers'.
    pub gateways: usize,
    /// With several gateways, how often they exchange routing state (virtual seconds;
    /// `cluster.sync_interval`): None, each routes on its own view.
    pub sync_interval: Option<f64>,
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
    /// The replica as each gateway sees it (its own in-flight counts, scrapes, learned speed).
    views: Vec<Arc<Replica>>,
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
    /// Publishes engine metrics the gateways scrape (false: a server without `/metrics`).
    scraped: bool,
}

struct SimPool {
    config: config::Pool,
    profile: Profile,
    /// Share of requests its replicas answer with a 500 at once.
    fail_rate: f64,
    replicas: Vec<SimReplica>,
    /// The pool's live state on each gateway.
    gateways: Vec<SimGateway>,
    policy: Option<Box<dyn Policy>>,
    /// The pools (this one first) its policy sizes as one tier ([`crate::scaler::tiers`]),
    /// and how fast each serves.
    tier: Option<(Vec<usize>, crate::scaler::tiers::TierScaler)>,
    starting: u32,
    /// How long its replicas take to start (the simulation's truth).
    cold_start: f64,
    /// What the scaler learns of that, and the replicas coming (as `scaler::spawn` keeps them).
    cold_starts: crate::pool::admission::ColdStarts,
    coming: crate::pool::admission::Coming,
}

/// One gateway's live state of a pool (`PoolState`).
struct SimGateway {
    snapshot: Snapshot,
    prefix: Option<PrefixIndex>,
    /// One FIFO per priority class, highest first: (request, arrived).
    queue: Vec<VecDeque<usize>>,
    queued: u64,
    sequence: u64,
    /// Longest wait of the requests that left the queue since the scaler's last look.
    max_wait: Option<f64>,
    /// Requests that arrived since the scaler's last look.
    arrivals: u64,
    /// Prompt prefixes it sent since the peers last read its routing state (`PlacementLog`).
    placed: Vec<(u64, Vec<u64>)>,
}

impl SimGateway {
    /// Budgets of the prefix index from the replicas' scraped KV capacity, as the gateway sets
    /// them (`PoolState::refresh_prefix_budgets`).
    fn register_prefix_replicas(&self, block_chars: u32) {
        if let Some(index) = &self.prefix {
            index.register(&self.snapshot.replicas, block_chars);
        }
    }

    /// A request left the queue after `waited` seconds (let in or expired).
    fn left_queue(&mut self, waited: f64) {
        self.queued -= 1;
        self.max_wait = Some(self.max_wait.map_or(waited, |w| w.max(waited)));
    }
}

impl SimPool {
    /// What the pool looks like on gateway `g` to a request at `now` (`PoolState::gate`).
    fn gate(&self, g: usize, now: Instant) -> Gate {
        let gateway = &self.gateways[g];
        admission::gate(&gateway.snapshot, &self.config, now, gateway.queued)
    }
}

/// Each tier's pools are scaled as one by the first's `infergate` policy, as the control loop
/// does (`scaler::spawn`); under another policy (a comparison's override) each pool alone.
fn tier_policies(config: &config::Config, pools: &mut [SimPool]) {
    for tier in &config.tiers {
        let first = &pools[tier.pools[0]].config;
        if first.scaler.policy != ScalerPolicy::Infergate {
            continue;
        }
        let scalers: Vec<&config::Scaler> = tier
            .pools
            .iter()
            .map(|&p| &pools[p].config.scaler)
            .collect();
        let scaler =
            crate::scaler::tiers::TierScaler::new(&first.scaler, first.slo, None, &scalers);
        for &p in &tier.pools {
            pools[p].policy = None;
        }
        pools[tier.pools[0]].tier = Some((tier.pools.clone(), scaler));
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
    StepEnd {
        pool: usize,
        replica: usize,
    },
    Ready {
        pool: usize,
        replica: usize,
    },
    Scrape(usize),
    /// The gateways of a pool read each other's routing state.
    PeerSync(usize),
    ScalerTick(usize),
    /// A look at a rollout's step (index in `Fleet::rollouts`).
    RolloutLook(usize),
    QueueDeadline {
        pool: usize,
        request: usize,
    },
    FirstByteDeadline(usize),
    DrainDeadline {
        pool: usize,
        replica: usize,
    },
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
    /// Per request, the gateway it arrives at.
    via: Vec<u32>,
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
    /// Per request, the pool its version draw chose (None before, or without a pool).
    routed: Vec<Option<u32>>,
    /// Per pool, its answers so far (what a rollout judges).
    tallies: Vec<rollout::Tally>,
    rollouts: Vec<rollout::SimRollout>,
    rollout_events: Vec<super::stats::RolloutEvent>,
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
                let uses_prefix = matches!(
                    pool.routing.policy,
                    RoutingPolicy::PrefixAffinity
                        | RoutingPolicy::PredictedTtft
                        | RoutingPolicy::Weighted
                );
                let classes = config.classification.priority_classes.len().max(1);
                let gateways = (0..spec.gateways.max(1))
                    .map(|_| SimGateway {
                        snapshot: Snapshot::default(),
                        prefix: uses_prefix
                            .then(|| PrefixIndex::new(pool.routing.prefix_cache_entries as usize)),
                        queue: (0..classes).map(|_| VecDeque::new()).collect(),
                        queued: 0,
                        sequence: 0,
                        max_wait: None,
                        arrivals: 0,
                        placed: Vec::new(),
                    })
                    .collect();
                SimPool {
                    policy: pool
                        .scaler
                        .enabled
                        .then(|| policy::build(&pool.scaler, pool.slo, None)),
                    tier: None,
                    cold_starts: crate::pool::admission::ColdStarts::new(pool.scaler.cold_start),
                    coming: Default::default(),
                    cold_start: spec
                        .cold_start
                        .unwrap_or(pool.scaler.cold_start.as_secs_f64()),
                    profile: spec.profiles[i].clone(),
                    fail_rate: spec.fail_rates.get(i).copied().unwrap_or(0.0),
                    config: pool,
                    replicas: Vec::new(),
                    gateways,
                    starting: 0,
                }
            })
            .collect::<Vec<SimPool>>();
        let mut pools = pools;
        tier_policies(config, &mut pools);
        let mut fleet = Self {
            workload,
            config,
            models: ModelIndex::new(&config.pools, &config.versions, &config.tiers),
            spec,
            epoch: Instant::now(),
            now: 0.0,
            events: BinaryHeap::new(),
            order: 0,
            pools,
            running: (0..workload.len()).map(|_| None).collect(),
            features: vec![None; workload.len()],
            queued_at: vec![0.0; workload.len()],
            via: vec![0; workload.len()],
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
            routed: vec![None; workload.len()],
            tallies: vec![Default::default(); config.pools.len()],
            rollouts: Vec::new(),
            rollout_events: Vec::new(),
        };
        fleet.start_rollouts();
        for p in 0..fleet.pools.len() {
            for _ in 0..spec.initial[p] {
                let r = fleet.add_replica(p);
                fleet.make_ready(p, r);
            }
            let pool = &fleet.pools[p].config;
            let (scrape, interval) = (pool.metrics.scrape_interval, pool.scaler.interval);
            fleet.at(scrape.as_secs_f64(), Ev::Scrape(p));
            if let Some(every) = spec.sync_interval.filter(|_| spec.gateways > 1) {
                fleet.at(every, Ev::PeerSync(p));
            }
            if fleet.pools[p].policy.is_some() || fleet.pools[p].tier.is_some() {
                let first = spec.scaler_phase.unwrap_or(interval.as_secs_f64());
                fleet.at(first, Ev::ScalerTick(p));
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
            + self
                .pools
                .iter()
                .flat_map(|p| &p.gateways)
                .map(|g| g.queued as usize)
                .sum::<usize>();
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
            Ev::PeerSync(pool) => {
                self.sync_gateways(pool);
                if let Some(every) = self.spec.sync_interval {
                    self.at(self.now + every, Ev::PeerSync(pool));
                }
            }
            Ev::ScalerTick(pool) => {
                self.scale(pool);
                let every = self.pools[pool].config.scaler.interval.as_secs_f64();
                self.at(self.now + every, Ev::ScalerTick(pool));
            }
            Ev::RolloutLook(at) => self.look_at_rollout(at),
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
}
