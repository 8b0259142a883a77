//! The scaling controller: pure policies in [`policy`], what they see in [`observation`], how a
//! recommendation becomes action in [`actuation`], the providers that act ([`local`]
//! processes, [`kubernetes`] workloads, behind [`provider::Provider`]), and the control loop
//! that feeds a policy the gateway's live view of its pool (exact in-flight and queued counts,
//! its own and its peer gateways', ready and starting replicas) and acts on each recommendation — when this gateway replica
//! holds the leader lease, if leader election is on. The fleet simulation runs the same
//! policy, observation and actuation code in virtual time. What a scaler learned of its pool
//! (its cold start, its bursts) outlives a reload, and with a `state_file` a restart, in
//! [`memory`].

pub mod actuation;
pub mod headroom;
pub mod kubernetes;
pub mod local;
pub mod memory;
pub mod observation;
pub mod policy;
pub mod provider;
pub mod tiers;

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;

use crate::kubernetes::lease::Leadership;
use crate::peers::Peers;
use crate::pool::{DECISIONS_KEPT, Decision, PoolState, ScalerStatus};
use observation::Beyond;
use policy::Observation;
use provider::{Action, Provider, Supply};

/// How a pool's scaler acts.
pub struct Actuation {
    /// Reports starting and draining replicas; None for a pool nothing can resize.
    pub provider: Option<Arc<dyn Provider>>,
    /// Whether the provider may act (false with the `static` provider: recommend only).
    pub enabled: bool,
    /// With leader election, acts only while this replica leads.
    pub leadership: Option<Arc<Leadership>>,
}

/// A pool the loop scales, with how it acts and its exported recommendation.
pub struct Scaled {
    pub pool: Arc<PoolState>,
    pub actuation: Actuation,
    pub desired_gauge: prometheus::IntGauge,
}

/// What the loop keeps of one pool between ticks.
struct Track {
    last_desired: Option<u32>,
    last_error: Option<String>,
    decisions: std::collections::VecDeque<Decision>,
    cold_starts: crate::pool::admission::ColdStarts,
}

/// Runs the scaler of one pool, or of a tier's pools as one (`tier`: the tier's model name;
/// [`tiers`]), every first pool's `scaler.interval` until aborted. Every replica computes and
/// exports the recommendation; only an enabled provider on the leader acts on it.
pub fn spawn(
    members: Vec<Scaled>,
    tier: Option<String>,
    peers: Arc<Peers>,
    scale_events: prometheus::IntCounterVec,
    epoch: Instant,
    memory: Arc<memory::Memory>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let first = members.first().expect("a pool to scale").pool.clone();
        let config = first.config.scaler.clone();
        // The bursts learned under the previous config go on being learned.
        let burst_key = match &tier {
            Some(model) => format!("tier {model}"),
            None => first.name().to_string(),
        };
        let kept = memory.bursts(&burst_key);
        let mut decide = match tier {
            Some(model) => {
                let pools: Vec<&crate::config::Scaler> =
                    members.iter().map(|m| &m.pool.config.scaler).collect();
                let scaler = tiers::TierScaler::new(&config, first.config.slo, kept, &pools);
                Decide::Tier(scaler, model)
            }
            None => Decide::Pool(policy::build(&config, first.config.slo, kept)),
        };
        memory.keep_bursts(&burst_key, decide.bursts());
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A cold start learned under the previous config is kept.
        let mut tracks: Vec<Track> = members
            .iter()
            .map(|m| Track {
                last_desired: None,
                last_error: None,
                decisions: std::collections::VecDeque::new(),
                cold_starts: crate::pool::admission::ColdStarts::new(
                    m.pool.config.scaler.cold_start,
                )
                .with_learned(memory.cold_start(m.pool.name())),
            })
            .collect();
        let clock_start = unix_time_at(epoch);
        loop {
            tick.tick().await;
            let mut seen = Vec::with_capacity(members.len());
            for (member, track) in members.iter().zip(&mut tracks) {
                seen.push(observe(member, track, &peers, epoch, clock_start, &memory).await);
            }
            let observations: Vec<Observation> = seen.iter().map(|s| s.0.clone()).collect();
            let plan: Vec<(u32, String)> = match &mut decide {
                Decide::Tier(scaler, model) => {
                    let (rec, counts) = scaler.decide(&observations);
                    let mix = describe_mix(&members, &counts);
                    let reason = format!(
                        "tier `{model}` needs {} units of capacity ({} per request in flight at \
                         speed 1), bought as {mix}: {}",
                        rec.desired,
                        tiers::UNITS_PER_REQUEST,
                        rec.reason
                    );
                    counts.iter().map(|&n| (n, reason.clone())).collect()
                }
                Decide::Pool(policy) => {
                    let rec = policy.recommend(&observations[0]);
                    vec![(rec.desired, rec.reason)]
                }
            };
            for (((member, track), (obs, supply, unknown)), (desired, reason)) in
                members.iter().zip(&mut tracks).zip(&seen).zip(plan)
            {
                let rec = policy::Recommendation { desired, reason };
                let context = Context {
                    scale_events: &scale_events,
                    supply: *supply,
                    peers_unknown: *unknown,
                };
                act(member, track, rec, obs, context).await;
            }
        }
    })
}

/// What decides a loop's replica counts.
enum Decide {
    Pool(Box<dyn policy::Policy>),
    /// A tier's scaler, and the tier's model name.
    Tier(tiers::TierScaler, String),
}

impl Decide {
    fn bursts(&self) -> Option<policy::SharedBursts> {
        match self {
            Decide::Pool(policy) => policy.bursts(),
            Decide::Tier(scaler, _) => scaler.bursts(),
        }
    }
}

/// "2 × l4 + 1 × h100".
fn describe_mix(members: &[Scaled], counts: &[u32]) -> String {
    let parts: Vec<String> = members
        .iter()
        .zip(counts)
        .map(|(m, n)| format!("{n} × {}", m.pool.name()))
        .collect();
    parts.join(" + ")
}

/// One pool's observation this tick, with its supply and how many peers are unknown; tells
/// the pool what is coming and remembers a learned cold start.
async fn observe(
    member: &Scaled,
    track: &mut Track,
    peers: &Peers,
    epoch: Instant,
    clock_start: f64,
    memory: &memory::Memory,
) -> (Observation, Supply, u32) {
    let pool = &member.pool;
    let supply = match &member.actuation.provider {
        Some(p) => p.observe().await,
        None => Supply::default(),
    };
    let now = Instant::now();
    let from_peers = peers.load(pool.name(), now);
    let beyond = Beyond {
        peers: from_peers.load,
        now_secs: now.duration_since(epoch).as_secs_f64(),
        starting: supply.starting,
        queued: pool.queued(),
        queue_wait: pool.queue.take_max_wait().map(|d| d.as_secs_f64()),
        cold_start: track.cold_starts.expected().as_secs_f64(),
        arrivals: pool.take_arrivals(),
        clock_start,
    };
    let obs = observation::observe(&pool.snapshot(), &pool.config, now, beyond);
    pool.set_coming(track.cold_starts.observe(now, obs.starting));
    if let Some(learned) = track.cold_starts.learned() {
        memory.remember_cold_start(pool.name(), learned);
    }
    (obs, supply, from_peers.unknown)
}

/// What [`act`] reports with.
struct Context<'a> {
    scale_events: &'a prometheus::IntCounterVec,
    supply: Supply,
    peers_unknown: u32,
}

/// Exports a pool's recommendation (an operator's pin replaces it), acts on it when this
/// gateway may, and records the pool's scaler status.
async fn act(
    member: &Scaled,
    track: &mut Track,
    mut rec: policy::Recommendation,
    obs: &Observation,
    context: Context<'_>,
) {
    let (pool, actuation) = (&member.pool, &member.actuation);
    // An operator's pin replaces the recommendation (the policy still sees the load).
    if let Some(pinned) = pool.hold.pinned() {
        rec.reason = format!("pinned at {pinned} by an operator (policy: {})", rec.reason);
        rec.desired = pinned;
    }
    member.desired_gauge.set(i64::from(rec.desired));
    let changed = track.last_desired != Some(rec.desired);
    if changed {
        tracing::info!(pool = pool.name(), ready = obs.ready, starting = obs.starting, desired = rec.desired, reason = %rec.reason, "scaler decision");
        track.last_desired = Some(rec.desired);
    }
    let leading = actuation.leadership.as_ref().is_none_or(|l| l.is_leader());
    let paused = pool.hold.paused();
    if paused {
        rec.reason = format!("paused by an operator (would want {})", rec.desired);
    }
    let acting = actuation.enabled && leading && !paused;
    if changed {
        if track.decisions.len() == DECISIONS_KEPT {
            track.decisions.pop_front();
        }
        track.decisions.push_back(Decision {
            at: crate::openai::unix_seconds(),
            desired: rec.desired,
            ready: obs.ready,
            starting: obs.starting,
            reason: rec.reason.clone(),
            acting,
        });
    }
    if let Some(provider) = actuation.provider.as_ref().filter(|_| acting) {
        match provider.scale(rec.desired, obs).await {
            Ok(action) => {
                track.last_error = None;
                let direction = match action {
                    Action::Up(_) => "up",
                    Action::Down(_) => "down",
                    Action::None => "",
                };
                if !direction.is_empty() {
                    context
                        .scale_events
                        .with_label_values(&[pool.name(), direction])
                        .inc();
                    pool.notify(
                        crate::config::EventKind::Scale,
                        format!(
                            "scaling {direction} to {} replicas ({} ready, {} starting): {}",
                            rec.desired, obs.ready, obs.starting, rec.reason
                        ),
                    );
                }
            }
            Err(e) => {
                let message = e.to_string();
                if track.last_error.as_ref() != Some(&message) {
                    tracing::error!(pool = pool.name(), "scaling failed: {message}");
                }
                track.last_error = Some(message);
            }
        }
    }
    pool.scaler_status.store(Some(Arc::new(ScalerStatus {
        desired: rec.desired,
        ready: obs.ready,
        starting: obs.starting,
        draining: context.supply.draining,
        cold_start: track.cold_starts.expected().as_secs_f64(),
        cold_start_learned: track.cold_starts.is_learned(),
        reason: rec.reason.clone(),
        acting,
        error: track.last_error.clone().filter(|_| acting),
        inflight: obs.inflight,
        queued: obs.queued,
        peers_unknown: context.peers_unknown,
        decisions: track.decisions.iter().cloned().collect(),
    })));
}

/// The Unix time (seconds) at `epoch`.
fn unix_time_at(epoch: Instant) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs_f64() - epoch.elapsed().as_secs_f64()
}
