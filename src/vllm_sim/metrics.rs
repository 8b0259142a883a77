//! The simulator's `/metrics`: vLLM's metric names, types and labels (`model_name`, `engine`),
//! or SGLang's with `--metrics-format sglang`, plus a DCGM-style `DCGM_FI_DEV_GPU_UTIL` gauge
//! standing in for a GPU exporter. Registered once; the engine task feeds it after every step.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use super::engine::{EngineStats, Finished};
use super::profile::Profile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsFlavor {
    Vllm,
    Sglang,
}

pub struct SimMetrics {
    registry: Registry,
    flavor: MetricsFlavor,
    running: IntGauge,
    waiting: IntGauge,
    kv_usage: Gauge,
    prefix_queries: IntCounter,
    prefix_hits: IntCounter,
    cache_hit_rate: Gauge,
    preemptions: IntCounter,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    success: IntCounterVec,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue_time: Histogram,
    lora_info: GaugeVec,
    gpu_util: Gauge,
    max_loras: u32,
}

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

impl SimMetrics {
    pub fn new(
        flavor: MetricsFlavor,
        model: &str,
        profile: &Profile,
        pod: &str,
        loras: bool,
    ) -> Self {
        let registry = Registry::new();
        let prefix = match flavor {
            MetricsFlavor::Vllm => "vllm",
            MetricsFlavor::Sglang => "sglang",
        };
        let labels = |opts: Opts| {
            let opts = opts.const_label("model_name", model);
            match flavor {
                MetricsFlavor::Vllm => opts.const_label("engine", "0"),
                MetricsFlavor::Sglang => opts,
            }
        };
        let name = |vllm: &str, sglang: &str| match flavor {
            MetricsFlavor::Vllm => format!("{prefix}:{vllm}"),
            MetricsFlavor::Sglang => format!("{prefix}:{sglang}"),
        };
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique");
        };
        let int_gauge = |n: String, help: &str| {
            let g = IntGauge::with_opts(labels(Opts::new(n, help))).expect("valid metric");
            reg(Box::new(g.clone()));
            g
        };
        let gauge = |n: String, help: &str| {
            let g = Gauge::with_opts(labels(Opts::new(n, help))).expect("valid metric");
            reg(Box::new(g.clone()));
            g
        };
        let counter = |n: String, help: &str| {
            let c = IntCounter::with_opts(labels(Opts::new(n, help))).expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        let histogram = |n: String, help: &str, buckets: &[f64]| {
            let o = labels(Opts::new(n, help));
            let h = Histogram::with_opts(HistogramOpts::from(o).buckets(buckets.to_vec()))
                .expect("valid metric");
            reg(Box::new(h.clone()));
            h
        };

        let running = int_gauge(
            name("num_requests_running", "num_running_reqs"),
            "Number of requests in model execution batches.",
        );
        let waiting = int_gauge(
            name("num_requests_waiting", "num_queue_reqs"),
            "Number of requests waiting to be processed.",
        );
        let kv_usage = gauge(
            name("kv_cache_usage_perc", "token_usage"),
            "KV-cache usage. 1 means 100 percent usage.",
        );
        // vLLM exports hits and queries as counters; SGLang a hit-rate gauge.
        let cache_hit_rate = Gauge::with_opts(labels(Opts::new(
            "sglang:cache_hit_rate",
            "Prefix cache hit rate (tokens).",
        )))
        .expect("valid metric");
        if flavor == MetricsFlavor::Sglang {
            reg(Box::new(cache_hit_rate.clone()));
        }
        let prefix_queries = counter(
            name("prefix_cache_queries_total", "prefix_cache_queries_total"),
            "Prefix cache queries, in terms of number of queried tokens.",
        );
        let prefix_hits = counter(
            name("prefix_cache_hits_total", "prefix_cache_hits_total"),
            "Prefix cache hits, in terms of number of cached tokens.",
        );
        let preemptions = counter(
            name("num_preemptions_total", "num_preemptions_total"),
            "Cumulative number of preemptions from the engine.",
        );
        let prompt_tokens = counter(
            name("prompt_tokens_total", "prompt_tokens_total"),
            "Number of prefill tokens processed.",
        );
        let generation_tokens = counter(
            name("generation_tokens_total", "generation_tokens_total"),
            "Number of generation tokens processed.",
        );
        let success = IntCounterVec::new(
            labels(Opts::new(
                name("request_success_total", "num_requests_total"),
                "Count of successfully processed requests.",
            )),
            &["finished_reason"],
        )
        .expect("valid metric");
        reg(Box::new(success.clone()));
        let ttft = histogram(
            name("time_to_first_token_seconds", "time_to_first_token_seconds"),
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        );
        let itl = histogram(
            name("inter_token_latency_seconds", "inter_token_latency_seconds"),
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        );
        let e2e = histogram(
            name("e2e_request_latency_seconds", "e2e_request_latency_seconds"),
            "Histogram of e2e request latency in seconds.",
            LATENCY_BUCKETS,
        );
        let queue_time = histogram(
            name("request_queue_time_seconds", "queue_time_seconds"),
            "Histogram of time spent in WAITING phase for request.",
            LATENCY_BUCKETS,
        );
        let lora_info = GaugeVec::new(
            labels(Opts::new(
                name("lora_requests_info", "lora_requests_info"),
                "Running stats on lora requests.",
            )),
            &["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
        )
        .expect("valid metric");
        if flavor == MetricsFlavor::Vllm {
            let info = GaugeVec::new(
                labels(Opts::new(
                    "vllm:cache_config_info",
                    "Information of the LLMEngine CacheConfig",
                )),
                &["block_size", "num_gpu_blocks", "enable_prefix_caching"],
            )
            .expect("valid metric");
            info.with_label_values(&[
                &profile.block_size.to_string(),
                &profile.kv_blocks.to_string(),
                "True",
            ])
            .set(1.0);
            reg(Box::new(info));
            if loras {
                reg(Box::new(lora_info.clone()));
            }
        }
        let gpu_util = Gauge::with_opts(
            Opts::new("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).")
                .const_label("gpu", "0")
                .const_label("pod", pod)
                .const_label("modelName", "infergate-sim"),
        )
        .expect("valid metric");
        reg(Box::new(gpu_util.clone()));

        Self {
            registry,
            flavor,
            running,
            waiting,
            kv_usage,
            prefix_queries,
            prefix_hits,
            cache_hit_rate,
            preemptions,
            prompt_tokens,
            generation_tokens,
            success,
            ttft,
            itl,
            e2e,
            queue_time,
            lora_info,
            gpu_util,
            max_loras: if loras { profile.max_loras } else { 0 },
        }
    }

    /// Brings gauges and counters up to date with the engine's stats.
    pub fn update(&self, stats: &EngineStats, now_unix: f64) {
        self.running.set(stats.running as i64);
        self.waiting.set(stats.waiting as i64);
        self.kv_usage.set(stats.kv_usage);
        let catch_up = |c: &IntCounter, total: u64| c.inc_by(total.saturating_sub(c.get()));
        catch_up(&self.prefix_queries, stats.prefix_queries_tokens);
        catch_up(&self.prefix_hits, stats.prefix_hits_tokens);
        catch_up(&self.preemptions, stats.preemptions);
        catch_up(&self.prompt_tokens, stats.prompt_tokens);
        catch_up(&self.generation_tokens, stats.generation_tokens);
        if stats.prefix_queries_tokens > 0 {
            self.cache_hit_rate
                .set(stats.prefix_hits_tokens as f64 / stats.prefix_queries_tokens as f64);
        }
        if self.flavor == MetricsFlavor::Vllm && self.max_loras > 0 {
            self.lora_info.reset();
            self.lora_info
                .with_label_values(&[
                    &stats.running_loras.join(","),
                    &stats.waiting_loras.join(","),
                    &self.max_loras.to_string(),
                ])
                .set(now_unix);
        }
    }

    pub fn observe_token_gap(&self, gap: f64) {
        self.itl.observe(gap);
    }

    pub fn observe_finished(&self, f: &Finished, reason: &str) {
        self.ttft.observe(f.ttft);
        self.e2e.observe(f.e2e);
        self.queue_time.observe(f.queue_time);
        self.success.with_label_values(&[reason]).inc();
    }

    pub fn set_gpu_util_percent(&self, percent: f64) {
        self.gpu_util.set(percent);
    }

    /// The exposition text.
    pub fn render(&self) -> Vec<u8> {
        crate::telemetry::render_metrics(&self.registry)
    }
}
