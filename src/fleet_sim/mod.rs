//! `infergate simulate`: the fleet simulation. A workload ([`workload`]) replayed in virtual
//! time ([`sim`]) through the real router and scaler code against engine-model replicas, once
//! per compared policy on a fresh fleet with the same seed; results as a terminal table, a JSON
//! report and SVG plots ([`plot`]).

pub mod plot;
pub mod sim;
pub mod stats;
pub mod workload;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;

use crate::config::{self, Discovery, RoutingPolicy, ScalerPolicy};
use stats::{RunReport, Slo};
use workload::{Generator, GeneratorKind, Shaping, Source, TraceFormat};

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
    /// Share of each pool's replicas that are slow (0-1), for a heterogeneous fleet.
    #[arg(long, default_value_t = 0.0)]
    pub slow_fraction: f64,
    /// How many times slower the slow replicas are.
    #[arg(long, default_value_t = 2.0)]
    pub slow_factor: f64,
    /// Time for a new replica to become ready (default: each pool's `scaler.cold_start`).
    #[arg(long, value_parser = seconds_arg)]
    pub cold_start: Option<f64>,
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
}

/// Parses a policy name as the YAML does (aliases included).
fn policy_arg<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|e| e.to_string())
}

/// A policy's name as the YAML spells it.
pub fn policy_name<T: serde::Serialize>(policy: &T) -> String {
    serde_json::to_value(policy)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The whole comparison.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub workload: WorkloadSummary,
    pub runs: Vec<RunReport>,
}

#[derive(Debug, serde::Serialize)]
pub struct WorkloadSummary {
    pub requests: usize,
    pub span_seconds: f64,
    pub mean_rate: f64,
    pub mean_prompt_tokens: f64,
    pub mean_output_tokens: f64,
}

/// Runs `simulate` as the command line asked; the report on stdout, files in `--out`.
pub fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => config::load(path)?,
        None => config::embedded_default(),
    };
    if args.no_scaler {
        for pool in &mut config.pools {
            pool.scaler.enabled = false;
        }
    }
    let requests = args.workload.load()?;
    let spec = fleet_spec(&config, &args)?;
    let runs = compared_runs(&args.routing, &args.scaler);
    let summary = summarize(&requests);
    if !args.quiet {
        eprintln!(
            "workload: {} requests over {:.0} s ({:.1}/s, prompt {:.0} / output {:.0} tokens on average); {} run(s)",
            summary.requests,
            summary.span_seconds,
            summary.mean_rate,
            summary.mean_prompt_tokens,
            summary.mean_output_tokens,
            runs.len()
        );
    }
    let mut reports = Vec::new();
    for (k, run) in runs.iter().enumerate() {
        let label = format!("[{}/{}] {}", k + 1, runs.len(), run.name);
        let mut progress = progress_printer(label, args.quiet);
        reports.push(sim::run(&config, &spec, run, &requests, &mut progress));
    }
    let report = Report {
        workload: summary,
        runs: reports,
    };
    println!("{}", table(&report.runs));
    if let Some(dir) = &args.out {
        write_outputs(dir, &report)?;
        println!(
            "wrote {}/report.json, timeline.svg, compare.svg",
            dir.display()
        );
    }
    Ok(())
}

/// One run per combination of the compared policies (one run when nothing is compared).
pub fn compared_runs(routing: &[RoutingPolicy], scaler: &[ScalerPolicy]) -> Vec<sim::RunSpec> {
    let routes: Vec<Option<RoutingPolicy>> = if routing.is_empty() {
        vec![None]
    } else {
        routing.iter().copied().map(Some).collect()
    };
    let scalers: Vec<Option<ScalerPolicy>> = if scaler.is_empty() {
        vec![None]
    } else {
        scaler.iter().copied().map(Some).collect()
    };
    let mut runs = Vec::new();
    for r in &routes {
        for s in &scalers {
            let mut parts = Vec::new();
            if let Some(r) = r {
                parts.push(policy_name(r));
            }
            if let Some(s) = s {
                parts.push(format!("scaler={}", policy_name(s)));
            }
            runs.push(sim::RunSpec {
                name: if parts.is_empty() {
                    "as configured".into()
                } else {
                    parts.join(" ")
                },
                routing: *r,
                scaler: *s,
            });
        }
    }
    runs
}

/// Engine profiles and initial replica counts per pool, from the config and the flags.
fn fleet_spec(config: &config::Config, args: &SimulateArgs) -> anyhow::Result<sim::FleetSpec> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.slow_fraction),
        "--slow-fraction must be between 0 and 1"
    );
    anyhow::ensure!(
        args.slow_factor > 0.0,
        "--slow-factor must be greater than 0"
    );
    anyhow::ensure!(
        args.sample_every > 0.0,
        "--sample-every must be greater than 0"
    );
    let mut profiles = Vec::new();
    let mut initial = Vec::new();
    for pool in &config.pools {
        let profile = match &args.profile {
            Some(name) => crate::vllm_sim::profile::profile(name).map_err(anyhow::Error::msg)?,
            None => match &pool.discovery {
                Discovery::Local(local) => local_profile(&local.command)
                    .with_context(|| format!("pool `{}`: reading its sim command", pool.name))?,
                _ => crate::vllm_sim::profile::profile("llama-8b-h100")
                    .map_err(anyhow::Error::msg)?,
            },
        };
        let mut profile = profile;
        if let Some(len) = args.max_model_len {
            profile.max_model_len = len;
        }
        profiles.push(profile);
        let configured = match &pool.discovery {
            Discovery::Static { endpoints, .. } => endpoints.len() as u32,
            Discovery::Local(local) => local.replicas,
            Discovery::Kubernetes(_) => pool.scaler.min_replicas.max(1),
        };
        let n = args.replicas.unwrap_or(configured);
        initial.push(if pool.scaler.enabled {
            n.clamp(pool.scaler.min_replicas, pool.scaler.max_replicas)
        } else {
            n
        });
    }
    Ok(sim::FleetSpec {
        profiles,
        initial,
        slow_fraction: args.slow_fraction,
        slow_factor: args.slow_factor,
        cold_start: args.cold_start,
        slo: Slo {
            ttft: args.ttft_slo,
            itl: args.itl_slo,
        },
        seed: args.workload.seed,
        sample_every: args.sample_every,
        tail: args.tail,
        keep_requests: false,
    })
}

/// The engine profile a local pool's `infergate sim ...` command runs, with its overrides and
/// `--speed` applied (a replica at speed 10 takes a tenth of the time per step).
fn local_profile(command: &[String]) -> anyhow::Result<crate::vllm_sim::profile::Profile> {
    #[derive(clap::Parser)]
    struct SimCommand {
        #[command(flatten)]
        args: crate::cli::SimArgs,
    }
    let Some(at) = command.iter().position(|a| a == "sim") else {
        return crate::vllm_sim::profile::profile("llama-8b-h100").map_err(anyhow::Error::msg);
    };
    let argv = std::iter::once("sim").chain(command[at + 1..].iter().map(String::as_str));
    let parsed = <SimCommand as clap::Parser>::try_parse_from(argv)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
    let opts = crate::cli::sim_options(parsed.args)?;
    let mut profile = opts.profile;
    let speed = opts.speed;
    profile.t0 /= speed;
    profile.prefill_per_token /= speed;
    profile.decode_per_seq /= speed;
    profile.context_per_token /= speed;
    Ok(profile)
}

fn summarize(requests: &[workload::Request]) -> WorkloadSummary {
    let n = requests.len().max(1) as f64;
    let span = requests.last().map_or(0.0, |r| r.arrival);
    WorkloadSummary {
        requests: requests.len(),
        span_seconds: span,
        mean_rate: requests.len() as f64 / span.max(1e-9),
        mean_prompt_tokens: requests
            .iter()
            .map(|r| f64::from(r.prompt_tokens))
            .sum::<f64>()
            / n,
        mean_output_tokens: requests
            .iter()
            .map(|r| f64::from(r.output_tokens))
            .sum::<f64>()
            / n,
    }
}

/// Progress on stderr: a line every 10 % when not a terminal (CI logs), else one updating line.
fn progress_printer(label: String, quiet: bool) -> impl FnMut(f64, f64) {
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut last_decile = 0;
    move |done: f64, total: f64| {
        if quiet {
            return;
        }
        let pct = (100.0 * done / total.max(1e-9)).min(100.0);
        let speed = done / started.elapsed().as_secs_f64().max(1e-9);
        let line = format!(
            "{label}: {pct:5.1} %  ({done:.0} of {total:.0} virtual s, {speed:.0}× real time)"
        );
        if tty {
            eprint!("\r{line}");
            if pct >= 100.0 {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        } else {
            let decile = (pct / 10.0) as u32;
            if decile > last_decile || pct >= 100.0 && last_decile < 10 {
                last_decile = decile.max(last_decile);
                eprintln!("{line}");
            }
        }
    }
}

/// The comparison as a table.
pub fn table(runs: &[RunReport]) -> String {
    let header = [
        "run",
        "TTFT p50",
        "p90",
        "p99",
        "ITL p90",
        "E2E p90",
        "tok/s",
        "SLO",
        "goodput",
        "cache hit",
        "replica·s",
        "max",
        "scale ↑/↓",
        "failed",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in runs {
        let failed: usize = r.failed.values().sum();
        rows.push(vec![
            r.name.clone(),
            secs(r.ttft.p50),
            secs(r.ttft.p90),
            secs(r.ttft.p99),
            secs(r.itl.p90),
            secs(r.e2e.p90),
            format!("{:.0}", r.throughput),
            format!("{:.1} %", 100.0 * r.slo_attainment),
            format!("{:.0}", r.goodput),
            format!("{:.1} %", 100.0 * r.prefix_cache_hit_rate),
            format!("{:.0}", r.replica_seconds),
            r.max_replicas.to_string(),
            format!("{}/{}", r.scale_ups, r.scale_downs),
            failed.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let pad = widths[c] - cell.chars().count();
                if c == 0 {
                    format!("{cell}{}", " ".repeat(pad))
                } else {
                    format!("{}{cell}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let slo = runs.first().map(|r| r.slo);
    if let Some(slo) = slo {
        out.push_str(&format!(
            "SLO: TTFT ≤ {} and mean ITL ≤ {}; latencies in seconds; virtual {:.0} s in {:.1} s wall ({:.0}× real time) per run",
            secs(slo.ttft),
            secs(slo.itl),
            runs[0].duration,
            runs[0].wall_seconds,
            runs[0].speedup()
        ));
    }
    out
}

fn secs(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// report.json, timeline.svg (replicas, load and TTFT over time) and compare.svg (per run).
pub fn write_outputs(dir: &std::path::Path, report: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("report.json", serde_json::to_string_pretty(report)?)?;
    let lines = |f: &dyn Fn(&stats::Sample) -> Option<f64>| -> Vec<(String, Vec<(f64, f64)>)> {
        report
            .runs
            .iter()
            .map(|r| {
                let points = r
                    .timeline
                    .iter()
                    .filter_map(|s| Some((s.t, f(s)?)))
                    .collect();
                (r.name.clone(), points)
            })
            .collect()
    };
    let charts = [
        plot::LineChart {
            title: "Ready replicas",
            x_label: "virtual time (s)",
            y_label: "replicas",
            series: lines(&|s| Some(f64::from(s.ready))),
        },
        plot::LineChart {
            title: "Load at the gateway (in flight + queued)",
            x_label: "virtual time (s)",
            y_label: "requests",
            series: lines(&|s| Some((s.inflight + s.queued) as f64)),
        },
        plot::LineChart {
            title: "TTFT p90 per interval",
            x_label: "virtual time (s)",
            y_label: "seconds",
            series: lines(&|s| s.ttft_p90),
        },
        plot::LineChart {
            title: "Arrival rate",
            x_label: "virtual time (s)",
            y_label: "requests/s",
            series: lines(&|s| Some(s.arrival_rate))
                .into_iter()
                .take(1)
                .collect(),
        },
    ];
    write(
        "timeline.svg",
        stack(charts.iter().map(plot::LineChart::svg)),
    )?;
    let bars =
        |title: &'static str, unit: &'static str, f: &dyn Fn(&RunReport) -> f64| plot::BarChart {
            title,
            y_label: unit,
            bars: report.runs.iter().map(|r| (r.name.clone(), f(r))).collect(),
        };
    let compare = [
        bars("TTFT p90", "seconds", &|r| r.ttft.p90),
        bars("TTFT p99", "seconds", &|r| r.ttft.p99),
        bars("Throughput", "output tokens/s", &|r| r.throughput),
        bars("SLO attainment", "%", &|r| 100.0 * r.slo_attainment),
        bars("Cost", "replica-seconds", &|r| r.replica_seconds),
    ];
    write(
        "compare.svg",
        stack(compare.iter().map(plot::BarChart::svg)),
    )?;
    Ok(())
}

/// Several SVG charts one above the other in one file.
fn stack(charts: impl Iterator<Item = String>) -> String {
    let charts: Vec<String> = charts.collect();
    let height = 300 * charts.len();
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="760" height="{height}" viewBox="0 0 760 {height}">"#
    );
    for (i, chart) in charts.iter().enumerate() {
        out.push_str(&format!(r#"<g transform="translate(0,{})">"#, 300 * i));
        out.push_str(chart);
        out.push_str("</g>");
    }
    out.push_str("</svg>\n");
    out
}
