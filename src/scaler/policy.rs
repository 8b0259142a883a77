//! Scaling policies: pure state machines. Each takes an [`Observation`] with `now` in it and
//! returns a [`Recommendation`] with its reason; no clock, no I/O, so the same code runs in the
//! control loop, in virtual time and in tests with exact expectations.
//!
//! - `infergate`: the maximum over the enabled signals of what each needs — concurrency
//!   (in-flight + queued at the gateway) over a per-replica target, KV-cache and GPU use over
//!   their targets, queue wait over its target — on a short window for scaling up and a long one
//!   for scaling down. Replicas still starting count as capacity that is coming, so a slow model
//!   load causes no overshoot; a growing gateway queue scales up at once; scaling down waits for
//!   the stabilisation window and removes at most `max_scale_down_step` replicas per decision;
//!   an idle pool with `min_replicas: 0` goes to zero after `scale_to_zero_after`. With the
//!   pool's `slo` stated, it also holds the headroom the load's past bursts within one cold
//!   start call for at the SLO's attainment target ([`super::headroom`]), and that headroom,
//!   not a longer stabilisation window, is what it keeps for the next burst.
//! - `hpa`: Kubernetes HPA's rule `ceil(current × metric / target)` with its 10 % tolerance and
//!   scale-down stabilisation (the highest recommendation within the window).
//! - `kpa`: Knative's KPA: `ceil(average concurrency / target)` over a 60 s stable and a 6 s panic
//!   window; panic when the panic window wants at least twice the ready replicas, and no scaling
//!   down while panicking.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::headroom::Burstiness;
use crate::config::{Scaler, ScalerPolicy, SloTarget};

/// What the control loop saw at one decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Seconds on the caller's clock (real or virtual).
    pub now: f64,
    /// Replicas taking traffic.
    pub ready: u32,
    /// Replicas started but not ready yet (loading).
    pub starting: u32,
    /// Requests in flight from the gateway to the pool (exact).
    pub inflight: u64,
    /// Requests held in the gateway's queue for the pool (exact).
    pub queued: u64,
    /// Mean KV-cache use of ready replicas (0–1), when scraped and fresh.
    pub kv_cache_usage: Option<f64>,
    /// Mean GPU use of ready replicas (0–1), when the pool has a GPU source.
    pub gpu_utilization: Option<f64>,
    /// Longest current wait in the gateway queue (seconds).
    pub queue_wait: Option<f64>,
    /// Seconds a replica asked for now takes to be ready: the pool's measured cold start, or
    /// `scaler.cold_start` until one is measured.
    pub cold_start: f64,
    /// Requests that arrived at this gateway since the previous observation (the demand; a
    /// share of the pool's with several gateways, which leaves its rises the same).
    pub arrivals: u64,
    /// The Unix time at which `now` read zero (0 in the fleet simulation): the burst history
    /// keeps Unix time, so that it reads back after a restart and knows the time of day.
    pub clock_start: f64,
}

impl Observation {
    fn load(&self) -> f64 {
        (self.inflight + self.queued) as f64
    }
    fn capacity(&self) -> u32 {
        self.ready + self.starting
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub desired: u32,
    /// Which signal decided, with its numbers.
    pub reason: String,
}

/// A scaling policy with its own history.
pub trait Policy: Send {
    fn recommend(&mut self, obs: &Observation) -> Recommendation;

    /// The bursts it learned, for a reload to go on from (only `infergate` with an SLO).
    fn bursts(&self) -> Option<SharedBursts> {
        None
    }
}

/// The bursts an `infergate` policy learned, shared with what outlives a reload
/// (`scaler::memory`).
pub type SharedBursts = Arc<Mutex<Burstiness>>;

/// Builds the configured policy; `slo`: the pool's, which `infergate` holds headroom for,
/// learning on from `kept` (the bursts learned under a previous config) when given.
pub fn build(
    config: &Scaler,
    slo: Option<SloTarget>,
    kept: Option<SharedBursts>,
) -> Box<dyn Policy> {
    match config.policy {
        ScalerPolicy::Infergate => Box::new(Infergate::new(config.clone()).with_slo(slo, kept)),
        ScalerPolicy::Hpa => Box::new(Hpa::new(config.clone())),
        ScalerPolicy::Kpa => Box::new(Kpa::new(config.clone())),
    }
}

/// The `infergate` policy of a tier of pools ([`super::tiers`]), from its first pool's
/// `config` and `slo`, in units of throughput; a rise of the load from below `floor` units is
/// not a burst.
pub fn build_tier(
    config: &Scaler,
    slo: Option<SloTarget>,
    kept: Option<SharedBursts>,
    floor: f64,
) -> Box<dyn Policy> {
    let mut policy = Infergate::new(super::tiers::unit_config(config));
    policy.burst_floor = floor;
    Box::new(policy.with_slo(slo, kept))
}

/// Samples of load over a sliding time window.
#[derive(Debug, Default)]
struct Window {
    samples: VecDeque<(f64, f64)>,
}

impl Window {
    fn push(&mut self, now: f64, value: f64, keep: f64) {
        self.samples.push_back((now, value));
        while self.samples.front().is_some_and(|(t, _)| *t < now - keep) {
            self.samples.pop_front();
        }
    }
    fn mean_since(&self, since: f64) -> Option<f64> {
        let (sum, n) = self
            .samples
            .iter()
            .filter(|(t, _)| *t >= since)
            .fold((0.0, 0usize), |(s, n), (_, v)| (s + v, n + 1));
        (n > 0).then(|| sum / n as f64)
    }
    fn max_since(&self, since: f64) -> Option<f64> {
        self.samples
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, v)| *v)
            .reduce(f64::max)
    }
}

/// How far ahead capacity must be asked for: a replica asked for now is ready after the cold
/// start and the next decision, less what a request may wait within its TTFT bound.
fn horizon(config: &Scaler, obs: &Observation, slo: &SloTarget) -> f64 {
    let interval = config.interval.as_secs_f64();
    (obs.cold_start + interval - slo.ttft.as_secs_f64()).max(interval)
}

fn clamp(config: &Scaler, desired: u32) -> u32 {
    desired.clamp(config.min_replicas, config.max_replicas)
}

fn ceil_div(load: f64, per_replica: f64) -> u32 {
    (load / per_replica).ceil().max(0.0) as u32
}

pub struct Infergate {
    config: Scaler,
    load: Window,
    kv: Window,
    gpu: Window,
    /// Past scale-down candidates, for the stabilisation window.
    down: Window,
    /// Since when the pool has had no load (for scale to zero).
    idle_since: Option<f64>,
    /// The first observation: no scale-down before a whole stabilisation window was seen.
    started: Option<f64>,
    /// Ready replicas at the previous observation: when new ones just became ready, the waits
    /// that just ended were spent waiting for them.
    previous_ready: u32,
    /// The SLO to hold burst headroom for, and the bursts learned so far.
    slo: Option<(SloTarget, SharedBursts)>,
    /// This decision's headroom: the factor on the load, the horizon it was learned over, and
    /// the past days whose same hours it came from (None: the last day).
    headroom: (f64, f64, Option<u32>),
    /// The load below which a rise is not a burst: what one replica is sized for.
    burst_floor: f64,
}

impl Infergate {
    pub fn new(config: Scaler) -> Self {
        Self {
            started: None,
            previous_ready: 0,
            load: Window::default(),
            kv: Window::default(),
            gpu: Window::default(),
            down: Window::default(),
            idle_since: None,
            slo: None,
            headroom: (1.0, 0.0, None),
            burst_floor: config.targets.concurrency,
            config,
        }
    }

    /// Holds headroom for the bursts of the pool's load at `slo`'s attainment target, learning
    /// on from `kept` when it was learned for the same concurrency target and window.
    pub fn with_slo(mut self, slo: Option<SloTarget>, kept: Option<SharedBursts>) -> Self {
        let (floor, smoothing) = (self.burst_floor, self.config.scale_up_window.as_secs_f64());
        let kept = kept.filter(|b| lock(b).tuned_for(floor, smoothing));
        self.slo = slo.map(|slo| {
            let bursts =
                kept.unwrap_or_else(|| Arc::new(Mutex::new(Burstiness::new(floor, smoothing))));
            (slo, bursts)
        });
        self
    }

    /// The scale-down stabilisation window: the configured one, or with an SLO at most the
    /// burst horizon (the learned headroom, not a long memory, covers the next burst).
    fn stabilization(&self) -> f64 {
        let configured = self.config.scale_down_stabilization.as_secs_f64();
        if self.slo.is_some() && self.headroom.1 > 0.0 {
            configured.min(self.headroom.1)
        } else {
            configured
        }
    }

    /// Replicas each signal needs, averaged since `since`; the largest wins.
    /// `just_ready`: replicas became ready since the previous observation.
    fn need(&self, obs: &Observation, since: f64, just_ready: bool) -> (u32, String) {
        let t = &self.config.targets;
        let mut best = (0u32, String::from("no load"));
        let mut consider = |need: f64, why: String| {
            let need = need.ceil().max(0.0) as u32;
            if need > best.0 {
                best = (need, why);
            }
        };
        if let Some(load) = self.load.mean_since(since) {
            consider(
                load / t.concurrency,
                format!(
                    "concurrency {load:.1} / target {} per replica",
                    t.concurrency
                ),
            );
            let (factor, horizon, same_hours_of) = self.headroom;
            if factor > 1.0 {
                let learned = match same_hours_of {
                    Some(days) => format!("at this hour of the last {days} days"),
                    None => "over the last day".to_string(),
                };
                consider(
                    load * factor / t.concurrency,
                    format!(
                        "concurrency {load:.1} with burst headroom ×{factor:.2} (the load's \
                         rise within {horizon:.0}s at the SLO's attainment, {learned}) / \
                         target {}",
                        t.concurrency
                    ),
                );
            }
        }
        if let Some(need) = self.kv.mean_since(since) {
            consider(
                need,
                format!(
                    "kv-cache use needs {need:.1} replicas at target {:.0}%",
                    t.kv_cache_usage.unwrap_or(0.0) * 100.0
                ),
            );
        }
        if let Some(need) = self.gpu.mean_since(since) {
            consider(
                need,
                format!(
                    "gpu use needs {need:.1} replicas at target {:.0}%",
                    t.gpu_utilization.unwrap_or(0.0) * 100.0
                ),
            );
        }
        // Long waits while replicas are still starting, or ended by replicas that just became
        // ready, are the cold start, not a shortage: that capacity is already there or coming.
        if let (Some(target), Some(wait)) = (t.queue_wait, obs.queue_wait)
            && wait > target.as_secs_f64()
            && obs.starting == 0
            && !just_ready
        {
            consider(
                f64::from(obs.capacity() + 1),
                format!(
                    "queue wait {wait:.1}s over target {:.1}s",
                    target.as_secs_f64()
                ),
            );
        }
        best
    }
}

fn lock(bursts: &SharedBursts) -> std::sync::MutexGuard<'_, Burstiness> {
    bursts.lock().unwrap_or_else(|e| e.into_inner())
}

impl Policy for Infergate {
    fn bursts(&self) -> Option<SharedBursts> {
        self.slo.as_ref().map(|(_, bursts)| bursts.clone())
    }

    fn recommend(&mut self, obs: &Observation) -> Recommendation {
        let c = &self.config;
        let (up_window, down_window) = (
            c.scale_up_window.as_secs_f64(),
            c.scale_down_window.as_secs_f64(),
        );
        let keep = down_window
            .max(up_window)
            .max(c.scale_down_stabilization.as_secs_f64());
        self.load.push(obs.now, obs.load(), keep);
        if let Some((slo, bursts)) = &self.slo {
            let horizon = horizon(c, obs, slo);
            let mut burst = lock(bursts);
            let unix = obs.now + obs.clock_start;
            burst.observe(unix, obs.arrivals, obs.load(), horizon);
            let factor = burst.factor(unix, slo.target);
            self.headroom = (factor, horizon, burst.same_hours_of());
        }
        let just_ready = obs.ready > self.previous_ready;
        self.previous_ready = obs.ready;
        // Per-replica use becomes "replicas needed" when measured, on the replicas it was
        // measured on; a missing sample adds nothing (it is not a zero).
        let ready = f64::from(obs.ready.max(1));
        if let (Some(kv), Some(target)) = (obs.kv_cache_usage, c.targets.kv_cache_usage) {
            self.kv.push(obs.now, ready * kv / target, keep);
        }
        if let (Some(gpu), Some(target)) = (obs.gpu_utilization, c.targets.gpu_utilization) {
            self.gpu.push(obs.now, ready * gpu / target, keep);
        }
        if obs.load() > 0.0 {
            self.idle_since = None;
        } else {
            self.idle_since.get_or_insert(obs.now);
        }
        let capacity = obs.capacity();
        let floor = c.min_replicas.max(1);
        let started = *self.started.get_or_insert(obs.now);
        let stabilization = self.stabilization();
        // No scale-down before a whole configured window was seen (with an SLO too: the
        // headroom needs a history, and the cold start may not be measured yet).
        let seen_a_window = obs.now - started >= c.scale_down_stabilization.as_secs_f64();
        // Every decision records its scale-down candidate, whichever way it goes, so the
        // stabilisation window sees the recent peaks.
        let (down, why_down) = self.need(obs, obs.now - down_window, just_ready);
        let (up, why_up) = self.need(obs, obs.now - up_window, just_ready);
        self.down.push(obs.now, f64::from(up.max(down)), keep);

        // Requests waiting with nothing to serve them: start one at once.
        if capacity == 0 && obs.load() > 0.0 {
            return Recommendation {
                desired: clamp(c, 1).max(1),
                reason: format!(
                    "{} requests held with no replica: scale from zero",
                    obs.load()
                ),
            };
        }
        // A queue at the gateway means the ready replicas are short now: add what the queue
        // needs, minus what is already starting (no overshoot while a model loads).
        if obs.queued > 0 {
            let need = obs.ready + ceil_div(obs.queued as f64, c.targets.concurrency).max(1);
            let (signal, why) = self.need(obs, obs.now - up_window, just_ready);
            let desired = clamp(c, need.max(signal));
            if desired > capacity {
                return Recommendation {
                    desired,
                    reason: format!("{} requests queued at the gateway; {why}", obs.queued),
                };
            }
        }
        let tolerance_ok = |desired: u32| {
            let current = f64::from(capacity.max(1));
            (1.0 - f64::from(desired) / current).abs() > c.tolerance
        };
        if up > capacity && tolerance_ok(up) {
            // Starting replicas already count in `capacity`: no overshoot while they load.
            return Recommendation {
                desired: clamp(c, up),
                reason: format!("scale up: {why_up}"),
            };
        }

        // Scale down: only to the highest need seen during the stabilisation window.
        let stable = self
            .down
            .max_since(obs.now - stabilization)
            .unwrap_or(f64::from(down)) as u32;
        let idle_long_enough = c.min_replicas == 0
            && self
                .idle_since
                .is_some_and(|t| obs.now - t >= c.scale_to_zero_after.as_secs_f64());
        if idle_long_enough && capacity > 0 && seen_a_window {
            return Recommendation {
                desired: capacity.saturating_sub(c.max_scale_down_step),
                reason: format!(
                    "idle for {:.0}s: scale towards zero",
                    obs.now - self.idle_since.unwrap_or(obs.now)
                ),
            };
        }
        let target = stable.max(floor);
        if target < capacity && obs.starting == 0 && seen_a_window && tolerance_ok(target) {
            let desired = clamp(
                c,
                target.max(capacity.saturating_sub(c.max_scale_down_step)),
            );
            return Recommendation {
                desired,
                reason: format!(
                    "scale down: {why_down} (highest need in the last {stabilization:.0}s: \
                     {stable})"
                ),
            };
        }
        let desired = clamp(c, capacity.max(if capacity == 0 { 0 } else { floor }));
        Recommendation {
            desired,
            reason: format!("hold at {desired}: {why_up}"),
        }
    }
}

pub struct Hpa {
    config: Scaler,
    recommendations: Window,
}

impl Hpa {
    pub fn new(config: Scaler) -> Self {
        Self {
            config,
            recommendations: Window::default(),
        }
    }
}

impl Policy for Hpa {
    fn recommend(&mut self, obs: &Observation) -> Recommendation {
        let c = &self.config;
        let current = obs.capacity();
        let per_replica = obs.load() / f64::from(obs.ready.max(1));
        let ratio = per_replica / c.targets.concurrency;
        // HPA's knobs, from the config: its tolerance and scale-down stabilisation window.
        let stabilization = c.scale_down_stabilization.as_secs_f64();
        let raw = if current == 0 {
            u32::from(obs.load() > 0.0)
        } else if (1.0 - ratio).abs() <= c.tolerance {
            current
        } else {
            (f64::from(current) * ratio).ceil() as u32
        };
        let raw = clamp(c, raw);
        self.recommendations
            .push(obs.now, f64::from(raw), stabilization);
        let stabilized = self
            .recommendations
            .max_since(obs.now - stabilization)
            .unwrap_or(f64::from(raw)) as u32;
        let desired = if raw > current {
            raw
        } else {
            stabilized.min(current.max(raw))
        };
        Recommendation {
            desired,
            reason: format!(
                "hpa: {per_replica:.1} per replica / target {} → {raw} (stabilised {desired})",
                c.targets.concurrency
            ),
        }
    }
}

pub struct Kpa {
    config: Scaler,
    load: Window,
    panicking_until: Option<f64>,
}

/// Knative's panic window as a share of its stable window (`panic-window-percentage`, 10 %),
/// unless `panic_window` is set.
const KPA_PANIC_SHARE: f64 = 0.1;

impl Kpa {
    pub fn new(config: Scaler) -> Self {
        Self {
            config,
            load: Window::default(),
            panicking_until: None,
        }
    }
}

impl Policy for Kpa {
    fn recommend(&mut self, obs: &Observation) -> Recommendation {
        let c = &self.config;
        // Knative's stable window is the config's scale-down window.
        let stable_window = c.scale_down_window.as_secs_f64();
        let panic_window = c
            .panic_window
            .map_or(stable_window * KPA_PANIC_SHARE, |w| w.as_secs_f64());
        self.load.push(obs.now, obs.load(), stable_window);
        let stable = self.load.mean_since(obs.now - stable_window).unwrap_or(0.0);
        let panic = self.load.mean_since(obs.now - panic_window).unwrap_or(0.0);
        let want_stable = ceil_div(stable, c.targets.concurrency);
        let want_panic = ceil_div(panic, c.targets.concurrency);
        let threshold = c.panic_threshold * f64::from(obs.ready.max(1));
        if f64::from(want_panic) >= threshold && want_panic > obs.capacity() {
            // Panic lasts at least a stable window after the last trigger.
            self.panicking_until = Some(obs.now + stable_window);
        }
        let panicking = self.panicking_until.is_some_and(|t| obs.now < t);
        let desired = if panicking {
            want_panic.max(obs.capacity())
        } else {
            want_stable
        };
        let desired = clamp(c, desired);
        Recommendation {
            desired,
            reason: format!(
                "kpa: stable {stable:.1} → {want_stable}, panic {panic:.1} → {want_panic}{}",
                if panicking { " (panicking)" } else { "" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> Scaler {
        let mut s = crate::config::embedded_default().pools[0].scaler.clone();
        s.policy = ScalerPolicy::Infergate;
        s.min_replicas = 1;
        s.max_replicas = 10;
        s.targets.concurrency = 10.0;
        s.targets.kv_cache_usage = Some(0.8);
        s.targets.gpu_utilization = None;
        s.targets.queue_wait = Some(Duration::from_secs(2));
        s.scale_up_window = Duration::from_secs(10);
        s.scale_down_window = Duration::from_secs(60);
        s.scale_down_stabilization = Duration::from_secs(60);
        s.tolerance = 0.1;
        s.max_scale_down_step = 1;
        s.scale_to_zero_after = Duration::from_secs(300);
        s
    }

    fn obs(now: f64, ready: u32, starting: u32, inflight: u64) -> Observation {
        Observation {
            now,
            ready,
            starting,
            inflight,
            ..Default::default()
        }
    }

    /// Runs `policy` once a second, applying its decisions at once (replicas ready instantly
    /// unless `startup` says otherwise), and returns the replica count after each step.
    fn simulate(
        policy: &mut dyn Policy,
        load: impl Fn(f64) -> u64,
        seconds: u32,
        start: u32,
    ) -> Vec<u32> {
        let mut ready = start;
        let mut counts = Vec::new();
        for s in 0..seconds {
            let r = policy.recommend(&obs(f64::from(s), ready, 0, load(f64::from(s))));
            ready = r.desired;
            counts.push(ready);
        }
        counts
    }

    #[test]
    fn ramp_scales_up_in_step_with_load() {
        let mut p = Infergate::new(config());
        // Load rises by 1 request per second to 60: needs 6 replicas of 10.
        let counts = simulate(&mut p, |t| (t as u64).min(60), 80, 1);
        assert_eq!(*counts.last().unwrap(), 6);
        assert!(
            counts.windows(2).all(|w| w[1] >= w[0]),
            "no scale-down during a ramp: {counts:?}"
        );
    }

    #[test]
    fn burst_scales_up_at_once_and_down_slowly() {
        let mut p = Infergate::new(config());
        let counts = simulate(
            &mut p,
            |t| if (10.0..20.0).contains(&t) { 80 } else { 5 },
            200,
            1,
        );
        // The 10 s up-window average passes 70 requests (7 replicas) by t = 19.
        assert!(counts[19] >= 7, "{counts:?}");
        // Back down only after the 60 s stabilisation, one replica per decision, to the floor.
        assert!(counts[60] >= 7, "held during stabilisation: {counts:?}");
        assert_eq!(counts[199], 1, "{counts:?}");
        let drops: Vec<i64> = counts
            .windows(2)
            .map(|w| i64::from(w[1]) - i64::from(w[0]))
            .filter(|d| *d < 0)
            .collect();
        assert!(
            drops.iter().all(|d| *d == -1),
            "at most one replica removed per decision: {counts:?}"
        );
    }

    #[test]
    fn starting_replicas_count_so_slow_starts_do_not_overshoot() {
        let mut p = Infergate::new(config());
        // 50 requests: 5 replicas. Decisions keep coming while the 4 new ones load.
        let first = p.recommend(&obs(0.0, 1, 0, 50));
        assert_eq!(first.desired, 5);
        for t in 1..30 {
            let r = p.recommend(&obs(f64::from(t), 1, 4, 50));
            assert_eq!(r.desired, 5, "t={t}: {}", r.reason);
        }
    }

    #[test]
    fn requests_held_during_a_cold_start_add_no_second_replica() {
        // Found by the fleet simulation: from zero, the held request kept queueing (and then
        // had waited longer than the queue-wait target) while the first replica loaded, and
        // each of those started another replica.
        let mut c = config();
        c.min_replicas = 0;
        let mut p = Infergate::new(c);
        let held = |now: f64, ready: u32, starting: u32, queue_wait: Option<f64>| Observation {
            now,
            ready,
            starting,
            queued: u64::from(ready == 0),
            inflight: u64::from(ready > 0),
            queue_wait,
            ..Default::default()
        };
        assert_eq!(p.recommend(&held(1.0, 0, 0, None)).desired, 1);
        for t in 2..8 {
            let r = p.recommend(&held(f64::from(t), 0, 1, None));
            assert_eq!(r.desired, 1, "t={t}: {}", r.reason);
        }
        // Ready at last: the request that waited 7 s through the cold start leaves the queue.
        let r = p.recommend(&held(8.0, 1, 0, Some(7.0)));
        assert_eq!(r.desired, 1, "{}", r.reason);
        // A queue that builds on ready replicas still scales up at once.
        let r = p.recommend(&Observation {
            now: 9.0,
            ready: 1,
            inflight: 10,
            queued: 15,
            queue_wait: Some(3.0),
            ..Default::default()
        });
        assert_eq!(r.desired, 3, "{}", r.reason);
    }

    #[test]
    fn no_scale_down_before_a_whole_window_was_observed() {
        let mut p = Infergate::new(config());
        // Started with 3 replicas and no load: hold for the 60 s stabilisation window first.
        let counts = simulate(&mut p, |_| 0, 70, 3);
        assert_eq!(counts[59], 3, "{counts:?}");
        assert_eq!(counts[69], 1, "{counts:?}");
    }

    #[test]
    fn load_near_the_threshold_does_not_flap() {
        let mut p = Infergate::new(config());
        // Load alternates 39/41 around 4 replicas' worth: never below 4 once at 5.
        let counts = simulate(
            &mut p,
            |t| if (t as u64).is_multiple_of(2) { 39 } else { 41 },
            300,
            4,
        );
        let changes = counts.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(changes <= 1, "{changes} changes: {counts:?}");
    }

    #[test]
    fn idle_pool_scales_to_zero_then_back_from_zero() {
        let mut c = config();
        c.min_replicas = 0;
        c.scale_to_zero_after = Duration::from_secs(30);
        let mut p = Infergate::new(c);
        let counts = simulate(&mut p, |t| if t < 5.0 { 5 } else { 0 }, 120, 1);
        assert_eq!(counts[20], 1, "not before scale_to_zero_after: {counts:?}");
        assert_eq!(counts[119], 0, "{counts:?}");
        // A held request at zero starts a replica at once.
        let r = p.recommend(&Observation {
            now: 121.0,
            queued: 1,
            ..Default::default()
        });
        assert_eq!(r.desired, 1, "{}", r.reason);
        assert!(r.reason.contains("scale from zero"));
    }

    #[test]
    fn gateway_queue_scales_up_immediately() {
        let mut p = Infergate::new(config());
        for t in 0..10 {
            p.recommend(&obs(f64::from(t), 2, 0, 10));
        }
        let r = p.recommend(&Observation {
            now: 10.0,
            ready: 2,
            inflight: 20,
            queued: 25,
            ..Default::default()
        });
        assert_eq!(r.desired, 5, "2 + ceil(25 / 10): {}", r.reason);
    }

    #[test]
    fn a_long_queue_wait_adds_a_replica() {
        let mut p = Infergate::new(config());
        for t in 0..5 {
            p.recommend(&obs(f64::from(t), 2, 0, 12));
        }
        // Concurrency says 2 are enough, but requests waited 3 s against a 2 s target.
        let r = p.recommend(&Observation {
            now: 5.0,
            ready: 2,
            inflight: 12,
            queue_wait: Some(3.0),
            ..Default::default()
        });
        assert_eq!(r.desired, 3, "{}", r.reason);
        assert!(r.reason.contains("queue wait"), "{}", r.reason);
        // A wait within the target changes nothing.
        let r = p.recommend(&Observation {
            now: 6.0,
            ready: 3,
            inflight: 12,
            queue_wait: Some(1.0),
            ..Default::default()
        });
        assert_eq!(r.desired, 3, "{}", r.reason);
    }

    #[test]
    fn a_missing_metric_is_ignored_not_read_as_zero() {
        let mut p = Infergate::new(config());
        // KV use says 3 replicas (2 × 0.95 / 0.8 = 2.4) while concurrency says 2.
        let with_kv = Observation {
            now: 0.0,
            ready: 2,
            inflight: 15,
            kv_cache_usage: Some(0.95),
            ..Default::default()
        };
        assert_eq!(p.recommend(&with_kv).desired, 3);
        // The scrape goes missing: the concurrency signal alone decides, and KV's last values
        // within the window still count (they are not replaced by zeros).
        let without = Observation {
            now: 1.0,
            ready: 3,
            inflight: 15,
            kv_cache_usage: None,
            ..Default::default()
        };
        assert_eq!(p.recommend(&without).desired, 3);
    }

    #[test]
    fn gpu_use_over_its_target_scales_up() {
        let mut c = config();
        c.targets.gpu_utilization = Some(0.6);
        let mut p = Infergate::new(c.clone());
        // 2 replicas at 90 % GPU with 5 requests: concurrency needs 1, the GPUs 2 × 0.9 / 0.6 = 3.
        let busy = Observation {
            now: 0.0,
            ready: 2,
            inflight: 5,
            gpu_utilization: Some(0.9),
            ..Default::default()
        };
        let r = p.recommend(&busy);
        assert_eq!(r.desired, 3, "{}", r.reason);
        assert_eq!(
            r.reason,
            "scale up: gpu use needs 3.0 replicas at target 60%"
        );
        // Without a GPU target the same reading is ignored.
        c.targets.gpu_utilization = None;
        let r = Infergate::new(c).recommend(&busy);
        assert_eq!(r.desired, 2, "{}", r.reason);
    }

    #[test]
    fn a_missing_gpu_reading_is_not_an_idle_gpu() {
        let mut c = config();
        c.targets.gpu_utilization = Some(0.8);
        let busy = Observation {
            now: 0.0,
            ready: 3,
            inflight: 5,
            gpu_utilization: Some(0.9),
            ..Default::default()
        };
        // 3 × 0.9 / 0.8 = 3.375 replicas needed.
        let mut missing = Infergate::new(c.clone());
        assert_eq!(missing.recommend(&busy).desired, 4);
        // The exporter goes quiet: the window keeps the readings it had, not a zero.
        let r = missing.recommend(&Observation {
            now: 1.0,
            ready: 4,
            inflight: 5,
            gpu_utilization: None,
            ..Default::default()
        });
        assert_eq!(r.desired, 4);
        assert_eq!(
            r.reason,
            "hold at 4: gpu use needs 3.4 replicas at target 80%"
        );
        // A real zero reading does lower the need: (3.375 + 0) / 2.
        let mut idle = Infergate::new(c);
        idle.recommend(&busy);
        let r = idle.recommend(&Observation {
            now: 1.0,
            ready: 4,
            inflight: 5,
            gpu_utilization: Some(0.0),
            ..Default::default()
        });
        assert_eq!(
            r.reason,
            "hold at 4: gpu use needs 1.7 replicas at target 80%"
        );
    }

    fn slo(target: f64) -> Option<SloTarget> {
        Some(SloTarget {
            ttft: Duration::from_secs(2),
            itl: Duration::from_millis(100),
            target,
            window: Duration::from_secs(300),
        })
    }

    /// Runs `policy` once a second with a 30 s cold start in the observation (decisions
    /// applied at once) and returns the replica count after each step.
    fn run_cold(policy: &mut Infergate, load: impl Fn(f64) -> u64, seconds: u32) -> Vec<u32> {
        let mut ready = 1;
        (0..seconds)
            .map(|s| {
                // Each request is in flight for a second: the arrivals are the load.
                let mut o = obs(f64::from(s), ready, 0, load(f64::from(s)));
                o.cold_start = 30.0;
                o.arrivals = o.inflight;
                ready = policy.recommend(&o).desired;
                ready
            })
            .collect()
    }

    /// 100 requests, with a 4x crowd for 90 s at 1800 s.
    fn crowd(t: f64) -> u64 {
        if (1800.0..1890.0).contains(&t) {
            400
        } else {
            100
        }
    }

    #[test]
    fn with_an_slo_the_headroom_past_bursts_call_for_is_held() {
        // 100 requests (10 replicas of 10) with a 4x crowd for 90 s at 1800 s. The crowd is
        // ~9 % of the load: at a 99 % attainment target the scaler holds the crowd's rise on
        // top of the load once it has seen one; at 80 % (or without an SLO) it does not.
        let mut c = config();
        c.max_replicas = 50;
        let mut strict = Infergate::new(c.clone()).with_slo(slo(0.99), None);
        let counts = run_cold(&mut strict, crowd, 3600);
        assert_eq!(counts[1700], 10, "no burst seen yet");
        // 40, or up to 10 % more: scaling down from the crowd's count stops within tolerance.
        assert!((40..=44).contains(&counts[3500]), "{}", counts[3500]);
        let reason = strict.recommend(&obs(3600.0, 40, 0, 100)).reason;
        assert!(reason.contains("burst headroom ×4.00"), "{reason}");
        assert!(reason.contains("over the last day"), "{reason}");
        let mut lax = Infergate::new(c.clone()).with_slo(slo(0.8), None);
        assert!((10..=11).contains(&run_cold(&mut lax, crowd, 3600)[3500]));
        let mut none = Infergate::new(c);
        assert!((10..=11).contains(&run_cold(&mut none, crowd, 3600)[3500]));
    }

    #[test]
    fn a_rebuilt_policy_goes_on_from_the_bursts_learned_before_unless_retuned() {
        // As above: the strict policy has seen the crowd. A policy built anew (a reload) from
        // its bursts holds the same headroom at once; one built fresh, or for another
        // concurrency target (the history's rises are measured against it), holds none.
        let mut c = config();
        c.max_replicas = 50;
        let mut before = Infergate::new(c.clone()).with_slo(slo(0.99), None);
        run_cold(&mut before, crowd, 3600);
        let at = |policy: &mut Infergate| {
            let mut o = obs(3601.0, 10, 0, 100);
            (o.cold_start, o.arrivals) = (30.0, 100);
            policy.recommend(&o).desired
        };
        let mut kept = Infergate::new(c.clone()).with_slo(slo(0.99), before.bursts());
        assert!(
            at(&mut kept) >= 40,
            "the crowd's headroom is held after the reload"
        );
        let mut fresh = Infergate::new(c.clone()).with_slo(slo(0.99), None);
        assert_eq!(at(&mut fresh), 10);
        c.targets.concurrency = 20.0;
        let retuned = Infergate::new(c).with_slo(slo(0.99), before.bursts());
        assert!(!Arc::ptr_eq(
            &retuned.bursts().unwrap(),
            &before.bursts().unwrap()
        ));
    }

    #[test]
    fn with_an_slo_a_burst_is_kept_for_the_horizon_not_the_stabilisation_window() {
        // A 10 s burst from 50 to 200 at 600 s, small enough to be under the 90 % target's
        // quantile (no headroom); the stabilisation window is 300 s. With the SLO the burst's
        // replicas are kept only for the 29 s horizon (30 s cold start + 1 s - 2 s TTFT).
        let mut c = config();
        c.max_replicas = 50;
        c.scale_down_stabilization = Duration::from_secs(300);
        let burst = |t: f64| if (600.0..610.0).contains(&t) { 200 } else { 50 };
        let mut with_slo = Infergate::new(c.clone()).with_slo(slo(0.9), None);
        let counts = run_cold(&mut with_slo, burst, 1200);
        let peak = counts[615];
        assert!(peak >= 15, "{:?}", &counts[600..620]);
        assert!(counts[700] < 10, "{:?}", &counts[600..720]);
        let mut without = Infergate::new(c);
        let counts = run_cold(&mut without, burst, 1200);
        assert_eq!(counts[615], peak);
        assert_eq!(counts[700], peak, "held for the 300 s window");
    }

    #[test]
    fn hpa_ratio_rule_tolerance_and_stabilisation() {
        let mut c = config();
        c.policy = ScalerPolicy::Hpa;
        let mut p = Hpa::new(c);
        // 4 replicas at 10.5 per replica: within 10 % tolerance, hold.
        assert_eq!(p.recommend(&obs(0.0, 4, 0, 42)).desired, 4);
        // 4 replicas at 20 per replica: ceil(4 × 2) = 8.
        assert_eq!(p.recommend(&obs(1.0, 4, 0, 80)).desired, 8);
        // Load drops: the 300 s window holds the highest recommendation (8).
        assert_eq!(p.recommend(&obs(2.0, 8, 0, 10)).desired, 8);
        assert_eq!(p.recommend(&obs(302.0, 8, 0, 10)).desired, 1);
    }

    #[test]
    fn kpa_panics_on_a_burst_and_never_scales_down_while_panicking() {
        let mut c = config();
        c.policy = ScalerPolicy::Kpa;
        let mut p = Kpa::new(c);
        for t in 0..60 {
            assert_eq!(p.recommend(&obs(f64::from(t), 1, 0, 5)).desired, 1);
        }
        // A burst of 100: the 6 s panic window wants ≥ 2× the ready replicas.
        let mut last = 0;
        for t in 60..66 {
            last = p.recommend(&obs(f64::from(t), 1, 0, 100)).desired;
        }
        assert!(last >= 5, "{last}");
        // Load vanishes: still panicking, no scale-down.
        let r = p.recommend(&obs(70.0, last, 0, 0));
        assert_eq!(r.desired, last, "{}", r.reason);
        assert!(r.reason.contains("panicking"));
    }

    #[test]
    fn hpa_and_kpa_take_their_knobs_from_the_config() {
        // HPA: tolerance 0.3 holds 4 replicas at 12.5 each (target 10); a 100 s stabilisation
        // window keeps a scale-up's count for 100 s, not HPA's default 300.
        let mut c = config();
        c.policy = ScalerPolicy::Hpa;
        c.tolerance = 0.3;
        c.scale_down_stabilization = Duration::from_secs(100);
        let mut p = Hpa::new(c);
        assert_eq!(p.recommend(&obs(0.0, 4, 0, 50)).desired, 4);
        assert_eq!(p.recommend(&obs(1.0, 4, 0, 80)).desired, 8);
        assert_eq!(p.recommend(&obs(90.0, 8, 0, 10)).desired, 8);
        assert_eq!(p.recommend(&obs(102.0, 8, 0, 10)).desired, 1);
        // KPA: the stable window is the scale-down window (20 s here, Knative's 60 by
        // default): 20 s after the load stops, its average is 0.
        let mut c = config();
        c.policy = ScalerPolicy::Kpa;
        c.scale_down_window = Duration::from_secs(20);
        let mut p = Kpa::new(c);
        for t in 0..20 {
            assert_eq!(p.recommend(&obs(f64::from(t), 5, 0, 50)).desired, 5);
        }
        let mut last = 5;
        for t in 20..40 {
            last = p.recommend(&obs(f64::from(t), 5, 0, 0)).desired;
        }
        assert_eq!(
            last, 1,
            "a 60 s window would still average 25 in flight (3 replicas)"
        );
        // KPA's panic threshold and window: a burst to 1.6× the ready replicas' worth panics
        // only with a threshold under 1.6 (Knative's 200 % waits for the stable window).
        let burst = |threshold: f64| {
            let mut c = config();
            c.policy = ScalerPolicy::Kpa;
            c.panic_threshold = threshold;
            c.panic_window = Some(Duration::from_secs(1));
            let mut p = Kpa::new(c);
            for t in 0..60 {
                p.recommend(&obs(f64::from(t), 5, 0, 50));
            }
            // 80 in flight wants 8 over the 1 s panic window, 1.6 × 5 ready.
            p.recommend(&obs(60.0, 5, 0, 80));
            p.recommend(&obs(61.0, 5, 0, 80))
        };
        let calm = burst(2.0);
        assert!(
            !calm.reason.contains("panicking") && calm.desired == 6,
            "{calm:?}"
        );
        let panicked = burst(1.5);
        assert!(
            panicked.reason.contains("panicking") && panicked.desired == 8,
            "{panicked:?}"
        );
    }
}
