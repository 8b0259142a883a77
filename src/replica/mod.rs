//! Per-replica load state: the gateway's exact in-flight count (an RAII guard held until the
//! answer's body ends), consecutive failures and ejection, the latest scraped engine stats and
//! GPU reading, the learned prefill speed and the LoRA adapters sent lately. One [`Replica`] per
//! upstream, shared by the router (reads) and the proxy and scraper (writes) through atomics and
//! one swapped pointer. The scraper that fills in its engine stats is [`crate::scrape`].
//!
//! This file holds the replica's state, its scrape, GPU and failure records and the views the
//! router reads; the in-flight guard and what a request teaches the replica are in `guard`, the
//! LoRA adapters it holds in `adapters`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, Scheme};
use prometheus::IntGauge;

mod adapters;
mod guard;

pub use adapters::adapter_id;
pub use guard::InflightGuard;

/// A replica's engine state as scraped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub waiting: f64,
    pub running: f64,
    /// KV-cache use, 0–1.
    pub kv_usage: Option<f64>,
    /// Prefix-cache hit rate, 0–1 (cumulative since the replica started).
    pub prefix_hit_rate: Option<f64>,
    /// KV-cache capacity in blocks.
    pub kv_blocks: Option<u64>,
    /// Tokens per KV-cache block.
    pub kv_block_tokens: Option<u64>,
    pub running_loras: Vec<String>,
    pub waiting_loras: Vec<String>,
    /// Adapters a replica holds at once (vLLM `max_lora`).
    pub max_loras: Option<u32>,
}

/// A replica's fresh engine state as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineView {
    /// Waiting requests, corrected by what this gateway sent since the scrape.
    pub waiting: f64,
    /// What holds requests at the gateway: the page's own waiting count less what of ours
    /// started since, or this gateway's streams there still without a first token, whichever
    /// is more — not raised by non-streamed requests sent since the page: those may be only in
    /// transit to a fast engine, and the next page shows them (a gate that counted them would
    /// keep the very sample it compares with low, and stay shut).
    pub admission_waiting: f64,
    pub running: f64,
    pub kv_usage: Option<f64>,
}

/// The latest successful scrape of a replica.
#[derive(Debug, Clone)]
pub struct Scraped {
    pub at: Instant,
    pub stats: EngineStats,
    /// This gateway's in-flight count when the page was read, to correct the scraped batch
    /// with what was sent since.
    pub inflight_at_scrape: u64,
    /// This gateway's requests without a first byte when the page was read, to correct the
    /// scraped queue with what was sent (and what started) since.
    pub pending_at_scrape: u64,
    /// Hashes ([`adapter_id`]) of the LoRA adapters the page showed running or waiting.
    pub adapters: Vec<u64>,
}

/// This gateway's own counts on a replica at one moment (when a metrics page is asked for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadMarks {
    /// Requests in flight.
    pub inflight: u64,
    /// Requests still waiting for their first byte.
    pub pending: u64,
}

/// Longest ejection, however many in a row (Envoy's `max_ejection_time` default).
pub const MAX_EJECTION_MS: u64 = 300_000;

/// Mean KV-cache use (0–1) of the replicas taking traffic (not ejected) that have fresh stats;
/// None when none has: the scaler's KV signal, in the gateway and in the fleet simulation.
pub fn mean_kv_usage(
    replicas: &[Arc<Replica>],
    now: Instant,
    stale_after: std::time::Duration,
) -> Option<f64> {
    let (sum, n) = replicas
        .iter()
        .filter(|r| r.takes_traffic(now))
        .filter_map(|r| r.fresh_stats(now, stale_after)?.stats.kv_usage)
        .fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / f64::from(n))
}

/// The pod and node behind a replica, as discovery reports them (empty for static and local
/// replicas unless configured).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub pod: Option<String>,
    pub node: Option<String>,
}

/// One upstream replica of a pool.
#[derive(Debug)]
pub struct Replica {
    /// Stable name for logs, metrics and the admin API (its address).
    pub name: String,
    /// Stable identity (a hash of the name), for indexes that outlive a snapshot.
    pub id: u64,
    pub scheme: Scheme,
    pub authority: Authority,
    /// The `Host` an HTTP/1.1 request to it names: its authority, without the port when that
    /// is the scheme's default (as hyper-util's client wrote it).
    pub host: http::HeaderValue,
    /// Where the replica runs, when discovery knows it (Kubernetes): GPU samples are matched
    /// to replicas by pod name.
    pub placement: Placement,
    inflight: IntGauge,
    consecutive_failures: AtomicU32,
    /// Ejections in a row with no success since: each lasts that many times the base time.
    ejections: AtomicU32,
    /// Back from an ejection with no success yet: the next failure ejects it again at once.
    half_open: std::sync::atomic::AtomicBool,
    /// Milliseconds since `epoch` until which the replica is ejected (0 = not ejected).
    ejected_until_ms: AtomicU64,
    /// Taken out of routing by an operator (`/admin/actions`: cordon, drain) until uncordoned.
    cordoned: std::sync::atomic::AtomicBool,
    epoch: Instant,
    scraped: ArcSwapOption<Scraped>,
    scrape_failures: AtomicU32,
    /// Prompt tokens of this gateway's requests to the replica that have no first byte yet:
    /// the prefill work queued ahead of a new request, exact for this gateway's traffic.
    pending_prefill: AtomicU64,
    /// The peer gateways' requests to the replica in flight, and the prompt tokens of their
    /// streams there without a first byte, as the peers last said (0 without peers).
    peer_inflight: AtomicU64,
    peer_pending_prefill: AtomicU64,
    /// This gateway's requests to the replica that have no first byte yet.
    pending_requests: AtomicU64,
    /// Those of them that stream: each is waiting or in its prefill there, whatever a page
    /// says (a non-streamed answer's first byte is its end, so says nothing of the sort).
    pending_streams: AtomicU64,
    /// Learned prefill speed, as two averages (f64 bits; 0 = not learned yet): time to first
    /// byte, and the prefill work (tokens) it covered. Their ratio is seconds per token — a
    /// ratio of means, so short prompts (whose first byte is mostly the step's fixed cost) do
    /// not make a replica look slow the way a mean of ratios would.
    first_byte_secs: AtomicU64,
    first_byte_work: AtomicU64,
    /// Time between a stream's chunks (f64 bits EWMA; 0 = none seen): the replica's current
    /// engine step, which every running sequence makes longer — the wait a new request has
    /// before its own prefill step ends, beyond its prefill work.
    step_secs: AtomicU64,
    /// Mean prompt tokens of requests sent here (f64 bits), to turn a scraped waiting count
    /// into tokens.
    mean_prompt_tokens: AtomicU64,
    /// Latest GPU use, 0–1 (f64 bits), and when it was read (milliseconds since `epoch` plus
    /// one; 0 = never). Two atomics instead of a swapped `Arc`: the router reads them for every
    /// candidate, and a reader pairing a new time with the previous value is harmless.
    gpu_use: AtomicU64,
    gpu_at_ms: AtomicU64,
    /// The LoRA adapters this gateway sent here, a ring of [`adapter_id`]s (0 = empty) with
    /// the count written so far.
    recent_adapters: [AtomicU64; adapters::RECENT_ADAPTERS],
    adapters_sent: AtomicU64,
}

impl Replica {
    /// `inflight` is the labelled gauge that exports this replica's count; the gauge itself is
    /// the counter, so the exported value is exact.
    pub fn new(scheme: Scheme, authority: Authority, inflight: IntGauge, epoch: Instant) -> Self {
        Self::placed(scheme, authority, Placement::default(), inflight, epoch)
    }

    /// A replica whose pod and node are known.
    pub fn placed(
        scheme: Scheme,
        authority: Authority,
        placement: Placement,
        inflight: IntGauge,
        epoch: Instant,
    ) -> Self {
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => authority.as_str(),
            _ => authority.host(),
        };
        Self {
            name: authority.to_string(),
            host: http::HeaderValue::from_str(host).expect("an authority is a valid header value"),
            id: crate::openai::fnv1a(authority.as_str().as_bytes()),
            scheme,
            authority,
            placement,
            inflight,
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            half_open: std::sync::atomic::AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            cordoned: std::sync::atomic::AtomicBool::new(false),
            epoch,
            scraped: ArcSwapOption::empty(),
            scrape_failures: AtomicU32::new(0),
            pending_prefill: AtomicU64::new(0),
            peer_inflight: AtomicU64::new(0),
            peer_pending_prefill: AtomicU64::new(0),
            pending_requests: AtomicU64::new(0),
            pending_streams: AtomicU64::new(0),
            first_byte_secs: AtomicU64::new(0),
            first_byte_work: AtomicU64::new(0),
            step_secs: AtomicU64::new(0),
            mean_prompt_tokens: AtomicU64::new(0),
            gpu_use: AtomicU64::new(0),
            gpu_at_ms: AtomicU64::new(0),
            recent_adapters: Default::default(),
            adapters_sent: AtomicU64::new(0),
        }
    }

    /// Stores a GPU-use reading (0–1) taken at `at` (one writer: the pool's scraper).
    pub fn record_gpu(&self, fraction: f64, at: Instant) {
        self.gpu_use.store(fraction.to_bits(), Ordering::Relaxed);
        self.gpu_at_ms
            .store(self.ms_since_epoch(at) + 1, Ordering::Relaxed);
    }

    /// GPU use (0–1) if read within `stale_after` of `now`; None when never read or stale
    /// (unknown, not idle).
    pub fn gpu_use(&self, now: Instant, stale_after: std::time::Duration) -> Option<f64> {
        let at = self.gpu_at_ms.load(Ordering::Relaxed).checked_sub(1)?;
        let age = self.ms_since_epoch(now).saturating_sub(at);
        (age <= stale_after.as_millis() as u64)
            .then(|| f64::from_bits(self.gpu_use.load(Ordering::Relaxed)))
    }

    /// Prompt tokens sent here by this gateway still waiting for their first byte.
    pub fn pending_prefill(&self) -> u64 {
        self.pending_prefill.load(Ordering::Relaxed)
    }

    /// Prompt tokens of streams sent here by every gateway still waiting for their first byte:
    /// this gateway's exact count plus what the peers last said.
    pub fn cluster_pending_prefill(&self) -> u64 {
        self.pending_prefill() + self.peer_pending_prefill.load(Ordering::Relaxed)
    }

    /// Requests in flight to the replica from every gateway: this gateway's exact count plus
    /// what the peers last said.
    pub fn cluster_inflight(&self) -> u64 {
        self.inflight() + self.peer_inflight.load(Ordering::Relaxed)
    }

    /// The peer gateways' requests here, summed over the peers (`crate::peers::routing`):
    /// in flight, and prompt tokens of their streams without a first byte.
    pub fn set_peer_load(&self, inflight: u64, pending_prefill: u64) {
        self.peer_inflight.store(inflight, Ordering::Relaxed);
        self.peer_pending_prefill
            .store(pending_prefill, Ordering::Relaxed);
    }

    /// Learned seconds per prompt token of prefill, once a first byte was seen.
    pub fn secs_per_token(&self) -> Option<f64> {
        let work = f64::from_bits(self.first_byte_work.load(Ordering::Relaxed));
        let secs = f64::from_bits(self.first_byte_secs.load(Ordering::Relaxed));
        (work > 0.0 && secs > 0.0).then(|| secs / work)
    }

    /// The replica's recent engine step time, from the gaps between streamed chunks.
    pub fn step_secs(&self) -> Option<f64> {
        match f64::from_bits(self.step_secs.load(Ordering::Relaxed)) {
            s if s > 0.0 => Some(s),
            _ => None,
        }
    }

    /// Mean prompt tokens of the requests sent here (0 before the first).
    pub fn mean_prompt_tokens(&self) -> f64 {
        f64::from_bits(self.mean_prompt_tokens.load(Ordering::Relaxed))
    }

    /// The engine step a request sent now waits out before its own prefill step ends: the
    /// step time seen on the replica's streams, none when nothing of ours runs there (an idle
    /// engine starts the next step at once).
    pub fn expected_step(&self) -> f64 {
        match self.inflight() {
            0 => 0.0,
            _ => self.step_secs().unwrap_or(0.0),
        }
    }

    /// Takes the replica out of routing (outlier detection, as Envoy's): for `base_ms` times the
    /// number of ejections in a row, at most [`MAX_EJECTION_MS`] (or `base_ms` when that is
    /// longer). When the time is up it returns half-open: its next answer is the probe — a
    /// failure ejects it again at once, for longer; a success closes the run. False if it
    /// already was out.
    pub fn eject(&self, now: Instant, base_ms: u64) -> bool {
        if self.is_ejected(now) {
            return false;
        }
        let run = u64::from(self.ejections.fetch_add(1, Ordering::Relaxed) + 1);
        let for_ms = base_ms
            .saturating_mul(run)
            .min(MAX_EJECTION_MS.max(base_ms))
            .max(1);
        self.ejected_until_ms
            .store(self.ms_since_epoch(now) + for_ms, Ordering::Relaxed);
        self.half_open.store(true, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        true
    }

    /// Stores a successful scrape (one writer: the pool's scraper). An ejected replica stays
    /// out: a page that answers says nothing of whether its answers do.
    pub fn record_scrape(&self, stats: EngineStats, at: Instant) {
        self.record_scrape_from(stats, at, self.load_marks());
    }

    /// This gateway's counts now, to be paired with a page asked for now.
    pub fn load_marks(&self) -> LoadMarks {
        LoadMarks {
            inflight: self.inflight(),
            pending: self.pending_requests.load(Ordering::Relaxed),
        }
    }

    /// [`Self::record_scrape`] of a page requested when this gateway's counts were `marks`:
    /// answers that ended while the page was on its way are then not counted again.
    pub fn record_scrape_from(&self, stats: EngineStats, at: Instant, marks: LoadMarks) {
        self.scrape_failures.store(0, Ordering::Relaxed);
        let adapters = stats
            .running_loras
            .iter()
            .chain(&stats.waiting_loras)
            .map(|name| adapter_id(name))
            .collect();
        self.scraped.store(Some(Arc::new(Scraped {
            at,
            stats,
            inflight_at_scrape: marks.inflight,
            pending_at_scrape: marks.pending,
            adapters,
        })));
    }

    /// Counts a failed scrape; returns how many failed in a row.
    pub fn record_scrape_failure(&self) -> u32 {
        self.scrape_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The latest scrape if it is younger than `stale_after`; stale stats are not used at all
    /// (the replica is then routed on the gateway's own counts).
    pub fn fresh_stats(
        &self,
        now: Instant,
        stale_after: std::time::Duration,
    ) -> Option<Arc<Scraped>> {
        self.scraped
            .load_full()
            .filter(|s| now.saturating_duration_since(s.at) <= stale_after)
    }

    /// The scraped engine queue, corrected by what this gateway sent or finished since (a burst
    /// between two scrapes counts at once), and KV use: what the router reads, in one look (a guard, no `Arc` clone: this
    /// runs for every candidate on every pick). None when stale.
    pub fn engine_view(
        &self,
        now: Instant,
        stale_after: std::time::Duration,
    ) -> Option<EngineView> {
        let guard = self.scraped.load();
        let scraped = guard
            .as_deref()
            .filter(|s| now.saturating_duration_since(s.at) <= stale_after)?;
        // Sent since and still waiting for their prefill: queued behind the rest. Started
        // since (first byte): they left the queue for the running batch. Ended since: they left
        // the running batch, or — when the page showed fewer running than that — the queue (a
        // short request can end between the page and now while the page still shows it
        // waiting).
        let pending = self.pending_requests.load(Ordering::Relaxed) as f64;
        let streams = self.pending_streams.load(Ordering::Relaxed) as f64;
        let queued_delta = pending - scraped.pending_at_scrape as f64;
        let sent_delta = self.inflight() as f64 - scraped.inflight_at_scrape as f64;
        let running = scraped.stats.running + sent_delta - queued_delta;
        Some(EngineView {
            waiting: (scraped.stats.waiting + queued_delta + running.min(0.0))
                .max(streams)
                .max(0.0),
            admission_waiting: (scraped.stats.waiting + queued_delta.min(0.0) + running.min(0.0))
                .max(streams)
                .max(0.0),
            running: running.max(0.0),
            kv_usage: scraped.stats.kv_usage,
        })
    }

    /// KV-cache capacity in tokens, from the latest scrape that reported it (capacity does not
    /// change while a replica runs, so an old scrape still tells it). vLLM's block size is 16
    /// tokens when a page names the block count alone.
    pub fn kv_capacity_tokens(&self) -> Option<u64> {
        let scraped = self.scraped.load();
        let stats = &scraped.as_deref()?.stats;
        Some(stats.kv_blocks? * stats.kv_block_tokens.unwrap_or(16))
    }

    /// Requests this gateway has sent to the replica whose answers have not ended.
    pub fn inflight(&self) -> u64 {
        self.inflight.get().max(0) as u64
    }

    fn ms_since_epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Whether new requests may go to the replica at `now`: neither ejected nor cordoned.
    pub fn takes_traffic(&self, now: Instant) -> bool {
        !self.is_cordoned() && !self.is_ejected(now)
    }

    /// Whether an operator took the replica out of routing.
    pub fn is_cordoned(&self) -> bool {
        self.cordoned.load(Ordering::Relaxed)
    }

    /// Takes the replica out of routing (true) or puts it back (false); requests already sent
    /// finish normally.
    pub fn set_cordoned(&self, cordoned: bool) {
        self.cordoned.store(cordoned, Ordering::Relaxed);
    }

    /// Whether the replica is out of routing at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ms_since_epoch(now) < self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Records a failure (connect error, 5xx answer, no first byte in time, a broken stream);
    /// after `eject_after` in a row — or the first after returning from an ejection — the
    /// replica is ejected ([`Self::eject`], `base_ms`). Returns true when this failure ejected it.
    pub fn record_failure(&self, now: Instant, eject_after: u32, base_ms: u64) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let probe_failed = self.half_open.load(Ordering::Relaxed) && !self.is_ejected(now);
        (failures >= eject_after || probe_failed) && self.eject(now, base_ms)
    }

    /// Records an answer that went well: the run of failures and of ejections ends. True when
    /// it was the probe of a replica back from an ejection (it is in routing again).
    pub fn record_success(&self) -> bool {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        // Only one answer closes a run (the swap), so a return is told once.
        self.half_open.load(Ordering::Relaxed) && self.half_open.swap(false, Ordering::Relaxed) && {
            self.ejections.store(0, Ordering::Relaxed);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    pub(super) fn replica() -> Arc<Replica> {
        let gauge = IntGauge::new("test_inflight", "test").unwrap();
        Arc::new(Replica::new(
            Scheme::HTTP,
            Authority::from_static("127.0.0.1:1"),
            gauge,
            Instant::now(),
        ))
    }

    #[test]
    fn ejection_after_consecutive_failures_then_return() {
        let r = replica();
        let now = Instant::now();
        assert!(!r.record_failure(now, 3, 1000));
        assert!(!r.record_success(), "no ejection yet: nothing comes back"); // resets the run
        assert!(!r.record_failure(now, 3, 1000));
        assert!(!r.record_failure(now, 3, 1000));
        assert!(r.record_failure(now, 3, 1000));
        assert!(r.is_ejected(now));
        assert!(r.is_ejected(now + Duration::from_millis(999)));
        let back = now + Duration::from_millis(1001);
        assert!(!r.is_ejected(back));
        // A metrics page that answers does not bring an ejected replica back early.
        assert!(
            r.record_failure(back, 3, 1000) && r.is_ejected(back),
            "half-open: the probe failed"
        );
        r.record_scrape(EngineStats::default(), back);
        assert!(
            r.is_ejected(back + Duration::from_millis(1500)),
            "second ejection: twice as long"
        );
        let back = back + Duration::from_millis(2001);
        assert!(!r.is_ejected(back));
        // The probe answers: the run ends (told once), and the next ejection is short again.
        assert!(r.record_success(), "back in routing");
        assert!(!r.record_success(), "told once");
        assert!(
            !r.record_failure(back, 3, 1000),
            "closed: one failure is not enough"
        );
        assert!(!r.record_failure(back, 3, 1000));
        assert!(r.record_failure(back, 3, 1000));
        assert!(!r.is_ejected(back + Duration::from_millis(1001)));
    }

    #[test]
    fn ejections_grow_up_to_a_bound() {
        let r = replica();
        let mut now = Instant::now();
        let mut lengths = Vec::new();
        for _ in 0..4 {
            assert!(r.eject(now, 120_000));
            let mut out = 0;
            while r.is_ejected(now + Duration::from_millis(out)) {
                out += 10_000;
            }
            lengths.push(out / 1000);
            now += Duration::from_millis(out);
        }
        assert_eq!(
            lengths,
            [120, 240, 300, 300],
            "seconds, capped at five minutes"
        );
    }

    #[test]
    fn the_scraped_queue_is_corrected_by_what_was_sent_and_ended_since() {
        let r = replica();
        let now = Instant::now();
        let stale = Duration::from_secs(1);
        let stats = |waiting: f64, running: f64| EngineStats {
            waiting,
            running,
            ..Default::default()
        };
        let marks = |inflight, pending| LoadMarks { inflight, pending };
        let view = |r: &Replica| {
            let v = r.engine_view(now, stale).unwrap();
            (v.waiting, v.running)
        };
        // The page was asked for with one request of ours in flight; it showed it waiting, and
        // it ended before the page arrived: nothing is left.
        r.record_scrape_from(stats(1.0, 0.0), now, marks(1, 0));
        assert_eq!(view(&r), (0.0, 0.0));
        // Ended ones leave the running batch first.
        r.record_scrape_from(stats(2.0, 3.0), now, marks(2, 0));
        assert_eq!(view(&r), (2.0, 1.0));
        // Sent since: they wait behind the rest.
        let _a = r.start_request();
        let _b = r.start_request();
        let _c = r.start_request();
        r.record_scrape_from(stats(2.0, 3.0), now, marks(1, 1));
        assert_eq!(view(&r), (4.0, 3.0));
        let admission_waiting = || r.engine_view(now, stale).unwrap().admission_waiting;
        assert_eq!(
            admission_waiting(),
            3.0,
            "three streams there have no first token"
        );
        // Two of them started since (first byte): they run, the queue keeps the one left.
        let (mut a, mut b) = (_a, _b);
        a.first_byte(std::time::Duration::from_millis(5));
        b.first_byte(std::time::Duration::from_millis(5));
        assert_eq!(view(&r), (2.0, 5.0));
        r.record_scrape_from(stats(2.0, 3.0), now, marks(1, 3));
        assert_eq!(
            admission_waiting(),
            1.0,
            "two started since: they left the queue"
        );
    }

    #[test]
    fn non_streamed_requests_in_transit_hold_nothing_at_the_gateway() {
        let r = replica();
        let now = Instant::now();
        let stale = Duration::from_secs(1);
        let unstreamed = |r: &Arc<Replica>| r.start_unstreamed_request(100);
        // Twenty non-streamed requests of ours had no first byte when the page was asked for,
        // and the engine showed nothing waiting: they were in transit or running.
        let mut guards: Vec<_> = (0..20).map(|_| unstreamed(&r)).collect();
        r.record_scrape(EngineStats::default(), now);
        // Two more sent since: the router counts them queued until the next page; the gate
        // does not, and none of them is prefill work ahead.
        guards.extend((0..2).map(|_| unstreamed(&r)));
        let view = r.engine_view(now, stale).unwrap();
        assert_eq!((view.waiting, view.admission_waiting), (2.0, 0.0));
        assert_eq!(r.pending_prefill(), 0);
        // Streams without a first token are waiting or in their prefill, whatever the page.
        let streams: Vec<_> = (0..3).map(|_| r.start_request_with(100)).collect();
        let view = r.engine_view(now, stale).unwrap();
        assert_eq!((view.waiting, view.admission_waiting), (5.0, 3.0));
        assert_eq!(r.pending_prefill(), 300);
        drop((guards, streams));
        assert_eq!(r.pending_prefill(), 0);
    }

    #[test]
    fn gpu_use_is_unknown_until_read_and_once_stale() {
        let r = replica();
        let now = Instant::now();
        let stale = Duration::from_secs(3);
        assert_eq!(r.gpu_use(now, stale), None);
        r.record_gpu(0.42, now);
        assert_eq!(r.gpu_use(now, stale), Some(0.42));
        assert_eq!(
            r.gpu_use(now + Duration::from_millis(2999), stale),
            Some(0.42)
        );
        assert_eq!(r.gpu_use(now + Duration::from_millis(3002), stale), None);
        r.record_gpu(0.0, now + Duration::from_secs(4));
        assert_eq!(
            r.gpu_use(now + Duration::from_secs(5), stale),
            Some(0.0),
            "an idle GPU is a reading, not a missing one"
        );
    }
}
