//! `infergate simulate`: the fleet simulation. A workload ([`workload`]) replayed in virtual
//! time ([`sim`]) through the real router and scaler code against engine-model replicas, once
//! per compared policy on a fresh fleet with the same seed; results as a terminal table, a JSON
//! report and SVG plots (`report`, [`plot`]). This file runs the command: the fleet and the
//! runs to compare from the config and the flags (`args`), with progress on stderr.

mod args;
pub mod plot;
mod report;
pub mod sim;
pub mod stats;
pub mod workload;

use std::io::{IsTerminal, Write};

use anyhow::Context;

use crate::config::{self, Discovery, RoutingPolicy, ScalerPolicy};
pub use args::{SimulateArgs, WorkloadArgs};
pub use report::{Report, WorkloadSummary, table, write_outputs};
use stats::Slo;

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
    let mut requests = args.workload.load()?;
    if let Some(model) = &args.model {
        for request in &mut requests {
            request.model = Some(model.clone());
        }
    }
    let spec = fleet_spec(&config, &args)?;
    let runs = compared_runs(&args.routing, &args.scaler);
    let summary = report::summarize(&requests);
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
    for run in report.runs.iter().filter(|r| !r.rollout.is_empty()) {
        println!("\nrollout ({}):", run.name);
        for event in &run.rollout {
            println!("  {:>7.1} s  {}: {}", event.t, event.model, event.text);
        }
    }
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
                parts.push(config::yaml_name(r));
            }
            if let Some(s) = s {
                parts.push(format!("scaler={}", config::yaml_name(s)));
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
        (0.0..=1.0).contains(&args.unscraped_fraction),
        "--unscraped-fraction must be between 0 and 1"
    );
    anyhow::ensure!(
        args.slow_factor > 0.0,
        "--slow-factor must be greater than 0"
    );
    anyhow::ensure!(
        args.scaler_phase.is_none_or(|p| p >= 0.0),
        "--scaler-phase must not be negative"
    );
    anyhow::ensure!(
        args.sample_every > 0.0,
        "--sample-every must be greater than 0"
    );
    anyhow::ensure!(
        args.kv_blocks != Some(0),
        "--kv-blocks must be greater than 0"
    );
    let mut profiles = Vec::new();
    let mut fail_rates = Vec::new();
    let mut initial = Vec::new();
    for pool in &config.pools {
        let (local, fail_rate) = match &pool.discovery {
            Discovery::Local(local) => {
                let (profile, fail_rate) = local_profile(&local.command)
                    .with_context(|| format!("pool `{}`: reading its sim command", pool.name))?;
                (Some(profile), fail_rate)
            }
            _ => (None, 0.0),
        };
        fail_rates.push(fail_rate);
        let mut profile = match (&args.profile, local) {
            (Some(name), _) => {
                crate::vllm_sim::profile::profile(name).map_err(anyhow::Error::msg)?
            }
            (None, Some(profile)) => profile,
            (None, None) => {
                crate::vllm_sim::profile::profile("llama-8b-h100").map_err(anyhow::Error::msg)?
            }
        };
        if let Some(len) = args.max_model_len {
            profile.max_model_len = len;
        }
        if let Some(blocks) = args.kv_blocks {
            profile.kv_blocks = blocks;
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
        fail_rates,
        initial,
        slow_fraction: args.slow_fraction,
        slow_factor: args.slow_factor,
        unscraped_fraction: args.unscraped_fraction,
        cold_start: args.cold_start,
        scaler_phase: args.scaler_phase,
        slo: Slo {
            ttft: args.ttft_slo,
            itl: args.itl_slo,
        },
        seed: args.workload.seed,
        sample_every: args.sample_every,
        tail: args.tail,
        keep_requests: false,
        gateways: args.gateways.max(1),
        sync_interval: match args.sync_interval {
            Some(secs) => (secs > 0.0).then_some(secs),
            None => config.cluster.sync_interval.map(|d| d.as_secs_f64()),
        },
    })
}

/// The engine profile a local pool's `infergate sim ...` command runs, with its overrides and
/// `--speed` applied (a replica at speed 10 takes a tenth of the time per step), and its
/// `--fail-rate`.
fn local_profile(command: &[String]) -> anyhow::Result<(crate::vllm_sim::profile::Profile, f64)> {
    #[derive(clap::Parser)]
    struct SimCommand {
        #[command(flatten)]
        args: crate::vllm_sim::SimArgs,
    }
    let Some(at) = command.iter().position(|a| a == "sim") else {
        let profile =
            crate::vllm_sim::profile::profile("llama-8b-h100").map_err(anyhow::Error::msg)?;
        return Ok((profile, 0.0));
    };
    let argv = std::iter::once("sim").chain(command[at + 1..].iter().map(String::as_str));
    let parsed = <SimCommand as clap::Parser>::try_parse_from(argv)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
    let opts = crate::vllm_sim::sim_options(parsed.args)?;
    let mut profile = opts.profile;
    let speed = opts.speed;
    profile.t0 /= speed;
    profile.prefill_per_token /= speed;
    profile.decode_per_seq /= speed;
    profile.context_per_token /= speed;
    Ok((profile, opts.fail_rate))
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
