//! The process's Prometheus metrics, registered once in one registry (gateway, pools, scaler,
//! discovery, leader election); per-pool handles are resolved at start so the request path
//! only touches atomics.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];
const CHUNK_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    /// Prompt and completion tokens of the answers, from their `usage` (estimated where a
    /// replica sends none).
    pub tokens: IntCounterVec,
    pub inflight: IntGaugeVec,
    pub replicas: IntGaugeVec,
    pub scaler_desired: IntGaugeVec,
    pub scale_events: IntCounterVec,
    pub queued: IntGaugeVec,
    /// Answers in flight from this gateway per pool (read by peer gateways).
    pub pool_inflight: IntGaugeVec,
    /// This gateway's identity (`id`), so that a peer list may include the gateway itself.
    pub gateway_info: IntGaugeVec,
    pub peer_up: IntGaugeVec,
    /// Prompt prefix placements read from the peer gateways' routing state.
    pub peer_placements: IntCounterVec,
    /// Chat events dropped because a webhook's queue was full, and messages given up.
    pub notify_dropped: IntCounterVec,
    pub notify_failed: IntCounterVec,
    /// Chat slash commands, by command and result.
    pub chat_commands: IntCounterVec,
    /// Each pool's SLO attainment over its window (pools with an `slo`).
    pub slo_attainment: GaugeVec,
    pub config_reloads: IntCounterVec,
    /// Replicas this gateway drains for a scale-down (peer gateways stop sending to them).
    pub draining: IntGaugeVec,
    pub kube_api_up: IntGaugeVec,
    pub kube_watch_errors: IntCounterVec,
    pub leader: IntGauge,
    /// Each split model's version weights now (moved by rollouts, reloads).
    pub version_weight: IntGaugeVec,
    /// Mirrored copies not sent because the shadow pool had no room at once.
    pub mirror_shed: IntCounterVec,
    /// Batches of spans sent to the OTLP collector, by result.
    pub trace_exports: IntCounterVec,
    ttfb: HistogramVec,
    duration: HistogramVec,
    stream_ttft: HistogramVec,
    inter_chunk: HistogramVec,
    bytes_out: IntCounterVec,
    bytes_in: IntCounterVec,
    retries: IntCounterVec,
    ejections: IntCounterVec,
    queue_wait: HistogramVec,
}

/// The request path's handles for one pool.
#[derive(Clone)]
pub struct PoolMetrics {
    pub ttfb: Histogram,
    pub duration: Histogram,
    pub stream_ttft: Histogram,
    pub inter_chunk: Histogram,
    pub bytes_out: IntCounter,
    pub bytes_in: IntCounter,
    pub retries: IntCounter,
    pub queue_wait: Histogram,
}

/// Handles for one pool's live state ([`crate::pool::PoolState`]): its replica count, the
/// ejections from routing, and the family of per-replica in-flight gauges.
#[derive(Clone)]
pub struct PoolGauges {
    pub replicas: IntGauge,
    pub ejections: IntCounter,
    pub inflight: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &["pool"],
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        Self {
            requests: counter(
                "infergate_requests_total",
                "Requests answered, by pool, model and status code.",
                &["pool", "model", "status"],
            ),
            tokens: counter(
                "infergate_tokens_total",
                "Tokens of the answers, by pool, model (as requested), version, API key and kind (prompt or completion): from each answer's usage, estimated where the replica sends none.",
                &["pool", "model", "version", "key", "kind"],
            ),
            inflight: gauge(
                "infergate_replica_inflight_requests",
                "Requests in flight from this gateway to each replica.",
                &["pool", "replica"],
            ),
            replicas: gauge(
                "infergate_pool_replicas",
                "Replicas known per pool.",
                &["pool"],
            ),
            scaler_desired: gauge(
                "infergate_scaler_desired_replicas",
                "Replicas the scaler recommends per pool.",
                &["pool"],
            ),
            scale_events: counter(
                "infergate_scale_events_total",
                "Scaling actions taken, by pool and direction (up, down).",
                &["pool", "direction"],
            ),
            queued: gauge(
                "infergate_queued_requests",
                "Requests waiting at the gateway for a replica, per pool.",
                &["pool"],
            ),
            pool_inflight: gauge(
                "infergate_pool_inflight",
                "Answers in flight from this gateway to the pool's replicas (peer gateways add it to their scaler's signal).",
                &["pool"],
            ),
            gateway_info: gauge(
                "infergate_gateway_info",
                "1, labelled with this gateway's identity (unique per process start).",
                &["id"],
            ),
            peer_up: gauge(
                "infergate_peer_up",
                "1 while the peer gateway's page was read at the last attempt, 0 when it was not.",
                &["peer"],
            ),
            peer_placements: counter(
                "infergate_peer_placements_total",
                "Prompt prefixes the peer gateways sent to replicas, as read from their routing state and recorded in this gateway's prefix index.",
                &["peer"],
            ),
            notify_dropped: counter(
                "infergate_notify_dropped_total",
                "Chat events dropped because the webhook's queue was full (its chat server is slow or down), by webhook (its index in chatops.notify).",
                &["webhook"],
            ),
            notify_failed: counter(
                "infergate_notify_failed_total",
                "Chat messages given up after retries, by webhook (its index in chatops.notify).",
                &["webhook"],
            ),
            slo_attainment: {
                let g = GaugeVec::new(
                    Opts::new(
                        "infergate_slo_attainment",
                        "Share of the pool's streamed answers within its SLO (first token within slo.ttft, mean chunk gap within slo.itl) over slo.window; set every 10 s once there are answers.",
                    ),
                    &["pool"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            chat_commands: counter(
                "infergate_chat_commands_total",
                "Slash commands from chat, by command and result (done, refused, unauthenticated).",
                &["command", "result"],
            ),
            draining: gauge(
                "infergate_draining_replica",
                "1 for each replica this gateway is draining for a scale-down; peer gateways stop sending to it too.",
                &["pool", "replica"],
            ),
            config_reloads: counter(
                "infergate_config_reloads_total",
                "Configuration reloads (SIGHUP), by result: applied, or rejected (the previous configuration keeps serving).",
                &["result"],
            ),
            kube_api_up: gauge(
                "infergate_kubernetes_api_up",
                "1 while the pool's Kubernetes watch works, 0 while the API server is unreachable (routing stays on the last known replicas).",
                &["pool"],
            ),
            kube_watch_errors: counter(
                "infergate_kubernetes_watch_errors_total",
                "Failed Kubernetes lists and watches, per pool (each is retried with back-off).",
                &["pool"],
            ),
            leader: {
                let g = IntGauge::new(
                    "infergate_leader",
                    "1 while this gateway replica holds the leader lease and may resize pools.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            version_weight: gauge(
                "infergate_version_weight",
                "Each version's share of a split model's requests now, in percent (a rollout moves it).",
                &["model", "version"],
            ),
            mirror_shed: counter(
                "infergate_mirror_shed_total",
                "Mirrored copies not sent because the shadow version's pool had no room at once (a mirror never queues).",
                &["pool"],
            ),
            trace_exports: counter(
                "infergate_trace_exports_total",
                "Batches of request spans sent to the OTLP collector (tracing.otlp_endpoint), by result: ok, or failed (the batch's spans are dropped).",
                &["result"],
            ),
            ttfb: histogram(
                "infergate_upstream_first_byte_seconds",
                "Time from sending a request upstream to its response headers.",
                LATENCY_BUCKETS,
            ),
            duration: histogram(
                "infergate_request_duration_seconds",
                "Time from receiving a request to the end of its answer.",
                LATENCY_BUCKETS,
            ),
            stream_ttft: histogram(
                "infergate_stream_first_chunk_seconds",
                "For streamed answers, time from the request to the first body chunk (time to first token; for the Responses API, its first text delta).",
                LATENCY_BUCKETS,
            ),
            inter_chunk: histogram(
                "infergate_stream_inter_chunk_seconds",
                "For streamed answers, time between body chunks (inter-token latency).",
                CHUNK_BUCKETS,
            ),
            bytes_out: counter(
                "infergate_response_bytes_total",
                "Answer body bytes sent to clients.",
                &["pool"],
            ),
            bytes_in: counter(
                "infergate_request_bytes_total",
                "Request body bytes received from clients.",
                &["pool"],
            ),
            retries: counter(
                "infergate_retries_total",
                "Requests retried on another replica after a connect failure.",
                &["pool"],
            ),
            ejections: counter(
                "infergate_ejections_total",
                "Replicas ejected from routing after repeated failures.",
                &["pool"],
            ),
            queue_wait: histogram(
                "infergate_queue_wait_seconds",
                "Time requests waited in the gateway queue for capacity.",
                LATENCY_BUCKETS,
            ),
            registry,
        }
    }

    /// Quantiles of `pool`'s streamed time to first token so far, read off its histogram
    /// (linear within a bucket, as Prometheus's `histogram_quantile` does); None without
    /// streams.
    pub fn ttft_quantiles(&self, pool: &str, quantiles: &[f64]) -> Vec<Option<f64>> {
        let counts = self.ttft_counts(pool);
        quantiles.iter().map(|q| quantile(&counts, *q)).collect()
    }

    /// Quantiles of `pool`'s gaps between stream chunks (inter-token latency) so far; None
    /// without streams.
    pub fn itl_quantiles(&self, pool: &str, quantiles: &[f64]) -> Vec<Option<f64>> {
        let counts = reading(&self.inter_chunk.with_label_values(&[pool]));
        quantiles
            .iter()
            .map(|q| quantile_in(CHUNK_BUCKETS, &counts, *q))
            .collect()
    }

    /// `pool`'s streamed-TTFT histogram now: cumulative counts per bucket and the total (a
    /// later reading minus an earlier one is what happened in between).
    pub fn ttft_counts(&self, pool: &str) -> Vec<u64> {
        reading(&self.stream_ttft.with_label_values(&[pool]))
    }

    /// Answers of `pool` to requests for `model` so far: (200, any other status).
    pub fn answers(&self, pool: &str, model: &str) -> (u64, u64) {
        use prometheus::core::Collector;
        let (mut ok, mut errors) = (0, 0);
        for m in self.requests.collect().iter().flat_map(|f| f.get_metric()) {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
                    .unwrap_or_default()
            };
            if label("pool") == pool && label("model") == model {
                let n = m.get_counter().get_value() as u64;
                if label("status") == "200" {
                    ok += n
                } else {
                    errors += n
                }
            }
        }
        (ok, errors)
    }

    /// The request path's handles for one pool.
    pub fn pool(&self, pool: &str) -> PoolMetrics {
        PoolMetrics {
            ttfb: self.ttfb.with_label_values(&[pool]),
            duration: self.duration.with_label_values(&[pool]),
            stream_ttft: self.stream_ttft.with_label_values(&[pool]),
            inter_chunk: self.inter_chunk.with_label_values(&[pool]),
            bytes_out: self.bytes_out.with_label_values(&[pool]),
            bytes_in: self.bytes_in.with_label_values(&[pool]),
            retries: self.retries.with_label_values(&[pool]),
            queue_wait: self.queue_wait.with_label_values(&[pool]),
        }
    }

    pub fn pool_gauges(&self, pool: &str) -> PoolGauges {
        PoolGauges {
            replicas: self.replicas.with_label_values(&[pool]),
            ejections: self.ejections.with_label_values(&[pool]),
            inflight: self.inflight.clone(),
        }
    }

    pub fn render(&self) -> Vec<u8> {
        crate::telemetry::render_metrics(&self.registry)
    }
}

/// The `q` quantile of a [`Metrics::ttft_counts`] reading (or the difference of two): linear
/// within a bucket; None without samples.
pub fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    quantile_in(LATENCY_BUCKETS, counts, q)
}

/// [`quantile`] of a histogram with the bucket bounds `bounds`.
fn quantile_in(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let (&total, buckets) = counts.split_last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = (0.0, 0u64);
    for (&bound, &count) in bounds.iter().zip(buckets) {
        if count as f64 >= rank {
            let share = (rank - below.1 as f64) / (count - below.1).max(1) as f64;
            return Some(below.0 + (bound - below.0) * share);
        }
        below = (bound, count);
    }
    Some(below.0) // beyond the last bound: the last bound
}

/// What a latency histogram ([`Metrics::ttft_counts`]) would read after observing `samples`
/// (the fleet simulation's stand-in for the gateway's histogram).
pub fn latency_counts(samples: &[f64]) -> Vec<u64> {
    let mut counts: Vec<u64> = LATENCY_BUCKETS
        .iter()
        .map(|&bound| samples.iter().filter(|&&s| s <= bound).count() as u64)
        .collect();
    counts.push(samples.len() as u64);
    counts
}

/// A histogram's cumulative bucket counts, in bound order, then its total: what
/// [`quantile`] reads.
fn reading(h: &Histogram) -> Vec<u64> {
    use prometheus::core::Collector;
    let mut counts: Vec<u64> = h
        .collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .flat_map(|m| m.get_histogram().get_bucket())
        .map(|b| b.cumulative_count())
        .collect();
    counts.push(h.get_sample_count());
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttft_quantiles_interpolate_within_buckets_as_prometheus_does() {
        let m = Metrics::new();
        assert_eq!(m.ttft_quantiles("p", &[0.5]), vec![None], "no streams yet");
        let h = m.pool("p").stream_ttft;
        // 80 in (0.05, 0.1], 20 in (0.5, 1.0].
        for _ in 0..80 {
            h.observe(0.07);
        }
        for _ in 0..20 {
            h.observe(0.7);
        }
        let q = m.ttft_quantiles("p", &[0.4, 0.8, 0.9]);
        // Rank 40 of the 80 in (0.05, 0.1]: halfway, 0.075; rank 80 is that bucket's top;
        // rank 90 is halfway into (0.5, 1.0].
        assert!((q[0].unwrap() - 0.075).abs() < 1e-9, "{q:?}");
        assert!((q[1].unwrap() - 0.1).abs() < 1e-9, "{q:?}");
        assert!((q[2].unwrap() - 0.75).abs() < 1e-9, "{q:?}");
    }

    #[test]
    fn the_simulations_latency_counts_read_as_the_gateways_histogram_does() {
        // The fleet simulation judges a rollout's TTFT on `latency_counts`, the gateway on its
        // histogram: the same samples must give the same counts, bound for bound.
        let m = Metrics::new();
        let h = m.pool("p").stream_ttft;
        let samples = [0.001, 0.05, 0.07, 0.1, 0.3, 0.7, 2.5, 9.0, 400.0];
        for s in samples {
            h.observe(s);
        }
        assert_eq!(latency_counts(&samples), m.ttft_counts("p"));
    }
}
