//! What a fleet simulation run measured: per-request outcomes folded into latency
//! distributions, SLO attainment, throughput and cost, plus a timeline for plots. Plain data
//! with `Serialize`, so the same numbers go to the terminal table, the JSON report and the SVGs.

use serde::Serialize;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    /// Its model is served by no pool (404).
    UnknownModel,
    /// Prompt plus output exceed the replicas' context window (400 from the replica).
    TooLong,
    /// A sheddable request while saturated (429).
    Shed,
    /// The gateway queue was full (429).
    QueueFull,
    /// It waited in the gateway queue longer than `max_queue_wait` (429).
    QueueTimeout,
    /// No replica and none coming (503).
    NoReplica,
    /// No first token within `timeouts.first_byte` (504).
    FirstByteTimeout,
    /// Still running when its replica's drain timeout passed at scale-down.
    CutByScaleDown,
    /// Still running when the simulation's time limit passed.
    Unfinished,
    /// The replica answered with a server error (a pool's `sim --fail-rate`).
    ServerError,
    /// A real request failed (`loadgen`: an error status or a stream that broke off).
    Error,
}

/// Latency summary in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Summary {
    /// Exact percentiles (nearest rank) of `values`, which are sorted in place.
    pub fn of(values: &mut [f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let rank =
            |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Self {
            count: values.len(),
            mean: values.iter().sum::<f64>() / values.len() as f64,
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
        }
    }
}

/// A histogram with buckets 2 % wide from 1 µs to about 3 hours: percentiles of millions of
/// token gaps in 1,000 counters.
#[derive(Debug, Clone)]
pub struct LogHistogram {
    counts: Vec<u64>,
    sum: f64,
    total: u64,
}

const LOG_MIN: f64 = 1e-6;
const LOG_STEP: f64 = 0.019_802_627_296_179_712; // ln(1.02)
const LOG_BUCKETS: usize = 1200;

impl Default for LogHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; LOG_BUCKETS],
            sum: 0.0,
            total: 0,
        }
    }
}

impl LogHistogram {
    pub fn record(&mut self, value: f64) {
        let bucket = if value <= LOG_MIN {
            0
        } else {
            ((value / LOG_MIN).ln() / LOG_STEP) as usize
        };
        self.counts[bucket.min(LOG_BUCKETS - 1)] += 1;
        self.sum += value;
        self.total += 1;
    }

    /// The upper edge of the bucket holding quantile `q` (within 2 %).
    fn quantile(&self, q: f64) -> f64 {
        let target = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return LOG_MIN * ((i + 1) as f64 * LOG_STEP).exp();
            }
        }
        0.0
    }

    pub fn summary(&self) -> Summary {
        if self.total == 0 {
            return Summary::default();
        }
        Summary {
            count: self.total as usize,
            mean: self.sum / self.total as f64,
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
        }
    }
}

/// One point of the timeline (state at `t`, and what happened since the previous point).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub t: f64,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
    pub inflight: u64,
    pub queued: u64,
    /// Arrivals per second since the previous point.
    pub arrival_rate: f64,
    /// Requests completed per second since the previous point.
    pub completion_rate: f64,
    /// TTFT percentiles of the first tokens since the previous point (None when there were none).
    pub ttft_p50: Option<f64>,
    pub ttft_p90: Option<f64>,
    /// The canary's weight in percent while a rollout runs or after it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<u32>,
}

/// SLO targets a request must meet to count as good.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Slo {
    /// Seconds to the first token.
    pub ttft: f64,
    /// Mean seconds between tokens.
    pub itl: f64,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// What distinguishes this run in a comparison (policies).
    pub name: String,
    pub routing: String,
    pub scaler: String,
    pub requests: usize,
    pub completed: usize,
    pub failed: std::collections::BTreeMap<Failure, usize>,
    pub ttft: Summary,
    pub itl: Summary,
    pub e2e: Summary,
    /// Output tokens per second of virtual time, over the workload's span.
    pub throughput: f64,
    pub slo: Slo,
    /// Share of all requests that completed within both SLO targets.
    pub slo_attainment: f64,
    /// Output tokens per second of the requests that met the SLO.
    pub goodput: f64,
    /// Prompt tokens served from the replicas' prefix caches over all prompt tokens.
    pub prefix_cache_hit_rate: f64,
    /// Running requests the replicas' engines preempted (KV cache full), over all replicas.
    pub preemptions: u64,
    /// Sum over replicas of the time from start (including cold start) to stop.
    pub replica_seconds: f64,
    /// Replica-hours × each pool's `scaler.replica_cost_per_hour`, when every pool states it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    pub scale_ups: u32,
    pub scale_downs: u32,
    pub max_replicas: u32,
    /// Virtual seconds simulated.
    pub duration: f64,
    /// Wall-clock seconds the run took.
    pub wall_seconds: f64,
    pub timeline: Vec<Sample>,
    /// Per replica: its share of the requests and how busy its engine was.
    pub replicas: Vec<ReplicaReport>,
    /// Each rollout's steps and verdicts, in time order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollout: Vec<RolloutEvent>,
    /// Per request, when the run was asked to keep them (`FleetSpec::keep_requests`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_request: Vec<RequestRecord>,
}

/// A rollout's step or verdict, as the gateway logs it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutEvent {
    /// Virtual seconds.
    pub t: f64,
    pub model: String,
    /// The canary's weight from then on.
    pub canary_weight: u32,
    pub text: String,
}

/// What one replica did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaReport {
    pub pool: usize,
    /// In start order within the pool.
    pub index: usize,
    /// One of the `--slow-fraction` replicas.
    pub slow: bool,
    /// Publishes metrics (false: one of the `--unscraped-fraction` replicas).
    pub scraped: bool,
    pub requests: u64,
    /// Share of its lifetime the engine was running steps (the simulator's GPU-busy figure).
    pub busy: f64,
}

/// How one request went.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestRecord {
    pub arrival: f64,
    /// Pool index and replica index within the pool (in start order), once dispatched.
    pub replica: Option<(usize, usize)>,
    pub ttft: Option<f64>,
    pub e2e: Option<f64>,
    pub failure: Option<Failure>,
}

impl RunReport {
    /// Virtual time over wall time.
    pub fn speedup(&self) -> f64 {
        self.duration / self.wall_seconds.max(1e-9)
    }
}

/// Collects outcomes during a run.
#[derive(Debug, Default)]
pub struct Recorder {
    pub ttft: Vec<f64>,
    pub e2e: Vec<f64>,
    pub itl: LogHistogram,
    pub failed: std::collections::BTreeMap<Failure, usize>,
    pub completed: usize,
    pub output_tokens: u64,
    pub good_requests: usize,
    pub good_tokens: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    /// First tokens since the last timeline point.
    pub window_ttft: Vec<f64>,
    pub window_arrivals: u64,
    pub window_completions: u64,
}

impl Recorder {
    pub fn fail(&mut self, why: Failure) {
        *self.failed.entry(why).or_default() += 1;
    }

    pub fn first_token(&mut self, ttft: f64) {
        self.ttft.push(ttft);
        self.window_ttft.push(ttft);
    }

    /// A finished request: `ttft` to its first token, `e2e` in all, `tokens` generated.
    pub fn finished(
        &mut self,
        ttft: f64,
        e2e: f64,
        tokens: u32,
        prompt: u32,
        cached: u32,
        slo: Slo,
    ) {
        self.completed += 1;
        self.window_completions += 1;
        self.e2e.push(e2e);
        self.output_tokens += u64::from(tokens);
        self.prompt_tokens += u64::from(prompt);
        self.cached_tokens += u64::from(cached);
        let mean_itl = if tokens > 1 {
            (e2e - ttft) / f64::from(tokens - 1)
        } else {
            0.0
        };
        if ttft <= slo.ttft && mean_itl <= slo.itl {
            self.good_requests += 1;
            self.good_tokens += u64::from(tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_percentiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&mut v);
        assert_eq!((s.p50, s.p90, s.p99, s.mean), (50.0, 90.0, 99.0, 50.5));
        assert_eq!(Summary::of(&mut []).count, 0);
    }

    #[test]
    fn log_histogram_is_within_two_percent() {
        let mut h = LogHistogram::default();
        for i in 1..=10_000 {
            h.record(f64::from(i) * 1e-4);
        }
        let s = h.summary();
        assert!((s.p50 / 0.5 - 1.0).abs() < 0.021, "{}", s.p50);
        assert!((s.p99 / 0.99 - 1.0).abs() < 0.021, "{}", s.p99);
        assert!((s.mean - 0.50005).abs() < 1e-9);
    }
}
