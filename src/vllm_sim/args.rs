//! The flags of `infergate sim` ([`SimArgs`]) and how they become a simulator's
//! [`SimOptions`]: a profile with its overrides, checked. Also what the fleet simulation reads
//! from a local pool's `sim` command.

use super::SimOptions;

/// Flags of `infergate sim`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  infergate sim --port 8001 --model llama --profile llama-8b-h100 --speed 10"
)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port (0 = any free port). The bound address is printed on one line of stdout at start.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Served model name(s), comma-separated; the first names the base model.
    #[arg(long, value_delimiter = ',', default_value = "sim-model")]
    pub model: Vec<String>,
    /// LoRA adapter names served besides the base model, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub lora: Vec<String>,
    /// Engine profile: llama-8b-h100, llama-70b-4xh100, llama-8b-l4, e5-embedding.
    #[arg(long, default_value = "llama-8b-h100")]
    pub profile: String,
    /// Override the profile's max_num_seqs (sequences per batch).
    #[arg(long)]
    pub max_num_seqs: Option<u32>,
    /// Override the profile's max_num_batched_tokens (tokens per step).
    #[arg(long)]
    pub max_num_batched_tokens: Option<u32>,
    /// Override the profile's KV-cache size (blocks of 16 tokens).
    #[arg(long)]
    pub kv_blocks: Option<u32>,
    /// Override the profile's context window (tokens).
    #[arg(long)]
    pub max_model_len: Option<u32>,
    /// Override the profile's fixed step time (seconds).
    #[arg(long)]
    pub step_time: Option<f64>,
    /// Override the profile's prefill cost per token (seconds).
    #[arg(long)]
    pub prefill_per_token: Option<f64>,
    /// Override the profile's decode cost per sequence (seconds).
    #[arg(long)]
    pub decode_per_seq: Option<f64>,
    /// Time scale: 10 = ten times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Seed for answer lengths and text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Simulated model loading: /health answers 503 this long after start (e.g. 30s).
    #[arg(long, value_parser = parse_duration_arg, default_value = "0s")]
    pub startup_delay: std::time::Duration,
    /// Share of requests answered with a 500 error (0-1).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Exit abruptly while streaming the Nth request (fault injection).
    #[arg(long)]
    pub crash_after: Option<u64>,
    /// Answer at once without timing (to measure a proxy's own overhead).
    #[arg(long)]
    pub instant: bool,
    /// Metric names to expose.
    #[arg(long, value_enum, default_value = "vllm")]
    pub metrics_format: super::metrics::MetricsFlavor,
    /// Mean answer length when a request sets no max_tokens (tokens).
    #[arg(long, default_value_t = 128.0)]
    pub mean_output_tokens: f64,
    /// Value of the `pod` label on the GPU gauge.
    #[arg(long, default_value = "infergate-sim")]
    pub pod: String,
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(text)
}

/// The simulator options the flags ask for; an error names the first bad flag.
pub(crate) fn sim_options(args: SimArgs) -> anyhow::Result<SimOptions> {
    let mut profile = super::profile::profile(&args.profile).map_err(anyhow::Error::msg)?;
    if let Some(v) = args.max_num_seqs {
        profile.max_num_seqs = v;
    }
    if let Some(v) = args.max_num_batched_tokens {
        profile.max_num_batched_tokens = v;
    }
    if let Some(v) = args.kv_blocks {
        profile.kv_blocks = v;
    }
    if let Some(v) = args.max_model_len {
        profile.max_model_len = v;
    }
    if let Some(v) = args.step_time {
        profile.t0 = v;
    }
    if let Some(v) = args.prefill_per_token {
        profile.prefill_per_token = v;
    }
    if let Some(v) = args.decode_per_seq {
        profile.decode_per_seq = v;
    }
    anyhow::ensure!(args.speed > 0.0, "--speed must be greater than 0");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.fail_rate),
        "--fail-rate must be between 0 and 1"
    );
    anyhow::ensure!(!args.model.is_empty(), "--model needs at least one name");
    anyhow::ensure!(
        profile.max_num_seqs > 0 && profile.kv_blocks > 0 && profile.max_num_batched_tokens > 0,
        "--max-num-seqs, --kv-blocks and --max-num-batched-tokens must be greater than 0"
    );
    let mut opts = SimOptions::new(profile);
    opts.listen = std::net::SocketAddr::new(args.host, args.port);
    opts.models = args.model;
    opts.loras = args.lora;
    opts.speed = args.speed;
    opts.seed = args.seed;
    opts.startup_delay = args.startup_delay;
    opts.fail_rate = args.fail_rate;
    opts.crash_after = args.crash_after;
    opts.instant = args.instant;
    opts.metrics_flavor = args.metrics_format;
    opts.mean_output_tokens = args.mean_output_tokens;
    opts.pod = args.pod;
    Ok(opts)
}
