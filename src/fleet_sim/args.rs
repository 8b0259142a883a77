//! The flags of `infergate simulate` ([`SimulateArgs`]) and of the workload it replays
//! ([`WorkloadArgs`], shared with `loadgen`), and how the workload flags become requests.

use std::path::PathBuf;

use crate::config::{self, RoutingPolicy, ScalerPolicy};

use super::workload::{self, Generator, GeneratorKind, Shaping, Source, TraceFormat};

/// Where a workload comes from and how it is shaped (shared by `simulate` and `loadgen`).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Trace file to replay (infergate JSONL, Mooncake JSONL or Azure CSV).
    #[arg(long, conflicts_with = "generator")]
    pub trace: Option<PathBuf>,
    /// Trace format (default: guessed from the file).
    #[arg(long, value_enum, requires = "trace")]
    pub trace_format: Option<TraceFormat>,
    /// Built-in workload generator (when no --trace).
    #[arg(long, value_enum, default_value = "poisson")]
    pub generator: GeneratorKind,
    /// Requests per second (the start rate of `ramp`, the mean of `diurnal`).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Final rate of `ramp` (requests per second).
    #[arg(long, default_value_t = 40.0)]
    pub rate_end: f64,
    /// Length of a generated workload (e.g. 60s, 10m).
    #[arg(long, value_parser = seconds_arg, default_value = "60s")]
    pub duration: f64,
    /// Coefficient of variation of inter-arrival times (1 = Poisson; default 4 for `bursty`,
    /// 1 for the others, which it also makes bursty when set).
    #[arg(long)]
    pub cv: Option<f64>,
    /// Period of `diurnal` (e.g. 10m).
    #[arg(long, value_parser = seconds_arg, default_value = "10m")]
    pub period: f64,
    /// Relative swing of `diurnal` (0-1).
    #[arg(long, default_value_t = 0.8)]
    pub amplitude: f64,
    /// Mean prompt tokens of generated requests (`shared-prefix`: the question length).
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: u32,
    /// Mean output tokens of generated requests.
    #[arg(long, default_value_t = 128)]
    pub output_tokens: u32,
    /// `shared-prefix`: number of system prompts.
    #[arg(long, default_value_t = 8)]
    pub groups: u32,
    /// `shared-prefix`: distinct questions per system prompt.
    #[arg(long, default_value_t = 32)]
    pub prompts_per_group: u32,
    /// `shared-prefix`: system prompt length (tokens).
    #[arg(long, default_value_t = 2048)]
    pub system_prompt_tokens: u32,
    /// Multiply arrival times (0.5 = the same requests in half the time, twice the rate).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Spread each trace arrival uniformly over this much later time (before --time-scale):
    /// for traces with rounded timestamps (Mooncake's are multiples of 3 s), whose requests
    /// would otherwise arrive in the same instant.
    #[arg(long, value_parser = seconds_arg, default_value = "0s")]
    pub arrival_jitter: f64,
    /// Keep each request with this probability (< 1), or repeat each this many times on
    /// average (> 1), keeping the arrival pattern's shape.
    #[arg(long, default_value_t = 1.0)]
    pub rate_scale: f64,
    /// Start of the window to keep, after time scaling (e.g. 5m).
    #[arg(long, value_parser = seconds_arg, default_value = "0s")]
    pub window_start: f64,
    /// Length of the window to keep (default: to the end).
    #[arg(long, value_parser = seconds_arg)]
    pub window: Option<f64>,
    /// Keep at most this many requests.
    #[arg(long)]
    pub max_requests: Option<usize>,
    /// Seed of the generators, sampling and routing randomness.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn seconds_arg(text: &str) -> Result<f64, String> {
    config::parse_duration(text).map(|d| d.as_secs_f64())
}

impl WorkloadArgs {
    /// Reads or generates the requests.
    pub fn load(&self) -> anyhow::Result<Vec<workload::Request>> {
        anyhow::ensure!(self.time_scale > 0.0, "--time-scale must be greater than 0");
        anyhow::ensure!(self.rate_scale > 0.0, "--rate-scale must be greater than 0");
        let source = match &self.trace {
            Some(path) => Source::Trace {
                path: path.clone(),
                format: match self.trace_format {
                    Some(f) => f,
                    None => workload::detect_format(path)?,
                },
            },
            None => {
                anyhow::ensure!(self.rate > 0.0, "--rate must be greater than 0");
                Source::Generator(Generator {
                    kind: self.generator,
                    rate: self.rate,
                    rate_end: self.rate_end,
                    duration: self.duration,
                    cv: self.cv.unwrap_or(match self.generator {
                        GeneratorKind::Bursty => 4.0,
                        _ => 1.0,
                    }),
                    period: self.period,
                    amplitude: self.amplitude,
                    prompt_tokens: self.prompt_tokens,
                    output_tokens: self.output_tokens,
                    groups: self.groups,
                    prompts_per_group: self.prompts_per_group,
                    system_prompt_tokens: self.system_prompt_tokens,
                    seed: self.seed,
                })
            }
        };
        let requests = workload::load(
            &source,
            &Shaping {
                arrival_jitter: self.arrival_jitter,
                time_scale: self.time_scale,
                rate_scale: self.rate_scale,
                window_start: self.window_start,
                window_length: self.window,
                max_requests: self.max_requests,
                seed: self.seed,
            },
        )?;
        anyhow::ensure!(
            !requests.is_empty(),
            "the workload has no requests (check the window)"
        );
        Ok(requests)
    }
}

/// Flags of `infergate simulate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  infergate simulate --rate 20 --duration 5m
  infergate simulate --config gateway.yaml --trace ../shared/traces/mooncake_conversation.jsonl \\
      --time-scale 0.25 --replicas 8 --no-scaler --routing predicted-ttft,round-robin,cache-aware
  infergate simulate --trace azure_llm_conv.csv --scaler infergate,hpa,kpa --cold-start 30s --out sim-out")]
pub struct SimulateArgs {
    /// Gateway configuration to simulate (default: the embedded default of `serve`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Routing policies to compare, comma-separated (default: as configured).
    #[arg(long, value_delimiter = ',', value_parser = policy_arg::<RoutingPolicy>)]
    pub routing: Vec<RoutingPolicy>,
    /// Scaler policies to compare, comma-separated: infergate, hpa, kpa (default: as configured).
    #[arg(long, value_delimiter = ',', value_parser = policy_arg::<ScalerPolicy>)]
    pub scaler: Vec<ScalerPolicy>,
    /// Replicas each pool starts with (default: from its discovery).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Keep the replica count fixed (no scaler).
    #[arg(long)]
    pub no_scaler: bool,
    /// Engine profile of every replica (default: from a local pool's `sim` command, else
    /// llama-8b-h100).
    #[arg(long)]
    pub profile: Option<String>,
    /// Override the replicas' context window (tokens); longer requests fail as vLLM's do.
    #[arg(long)]
    pub max_model_len: Option<u32>,
    /// Override the replicas' KV cache size (blocks of 16 tokens), as `infergate sim
    /// --kv-blocks` does: a smaller cache fills and preempts sooner.
    #[arg(long)]
    pub kv_blocks: Option<u32>,
    /// Share of each pool's replicas that are slow (0-1), for a heterogeneous fleet.
    #[arg(long, default_value_t = 0.0)]
    pub slow_fraction: f64,
    /// How many times slower the slow replicas are.
    #[arg(long, default_value_t = 2.0)]
    pub slow_factor: f64,
    /// Share of each pool's replicas (every k-th, from the first) without a metrics page, as a
    /// foreign OpenAI server: the gateway routes them on its own counts and learned speed.
    #[arg(long, default_value_t = 0.0)]
    pub unscraped_fraction: f64,
    /// Gateway replicas in front of the fleet, each with its own routing state, prefix index
    /// and queue, exchanged every --sync-interval; a request goes to one by its session (else
    /// in turn), and the first one scales on the load of all.
    #[arg(long, default_value_t = 1)]
    pub gateways: usize,
    /// How often the gateways exchange routing state (default: the config's
    /// `cluster.sync_interval`; 0s: never, each routes on its own view).
    #[arg(long, value_parser = seconds_arg)]
    pub sync_interval: Option<f64>,
    /// Time for a new replica to become ready (default: each pool's `scaler.cold_start`).
    #[arg(long, value_parser = seconds_arg)]
    pub cold_start: Option<f64>,
    /// Virtual time of each scaler's first tick, after which it ticks every `scaler.interval`
    /// (default: one interval). A comparison with a real run gives the real scaler's tick
    /// offset from the start of its load, so both decide on the same instants.
    #[arg(long, value_parser = seconds_arg)]
    pub scaler_phase: Option<f64>,
    /// TTFT target for SLO attainment and goodput.
    #[arg(long, value_parser = seconds_arg, default_value = "2s")]
    pub ttft_slo: f64,
    /// Mean inter-token latency target for SLO attainment and goodput.
    #[arg(long, value_parser = seconds_arg, default_value = "100ms")]
    pub itl_slo: f64,
    /// Virtual time between timeline points.
    #[arg(long, value_parser = seconds_arg, default_value = "5s")]
    pub sample_every: f64,
    /// How long after the last arrival requests may still finish.
    #[arg(long, value_parser = seconds_arg, default_value = "10m")]
    pub tail: f64,
    /// Directory for report.json and the SVG plots.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print no progress.
    #[arg(long)]
    pub quiet: bool,
    /// The model every request names (default: the trace's, else the first pool's), e.g. a
    /// name split across versions, to replay its rollout.
    #[arg(long)]
    pub model: Option<String>,
}

/// Parses a policy name as the YAML does (aliases included).
fn policy_arg<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|e| e.to_string())
}
