//! Command-line interface: the subcommands and their help, and the one place that turns an
//! error into a message and an exit code. Commands with many flags define them beside the code
//! they configure (`vllm_sim::SimArgs`, `fleet_sim::SimulateArgs`, `loadgen`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;
use crate::telemetry::{self, LogFormat};
// `infergate sim`'s flags live with the simulator; re-exported at their old path.
pub use crate::vllm_sim::SimArgs;
use crate::vllm_sim::sim_options;

const EXAMPLES: &str = "\
Examples:
  infergate serve                          # local fleet of simulated replicas, autoscaled
  infergate serve --config gateway.yaml    # your own pools
  infergate check-config config/*.yaml     # validate config files, list every problem
  infergate load --concurrency 32          # drive load at the running gateway
  infergate simulate --rate 20 --duration 5m --routing predicted-ttft,round-robin
  infergate admin pin local 3              # hold the pool `local` at 3 replicas
  infergate config-reference > docs/config.md";

#[derive(Debug, Parser)]
#[command(
    name = "infergate",
    version,
    about = "Load-aware inference gateway and autoscaler for LLM model servers",
    after_help = EXAMPLES,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Log format on standard error (level from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
pub enum Command {
    /// Run the gateway (and its scaler). Without --config, runs the embedded default: a local
    /// fleet of simulated vLLM replicas, autoscaled.
    Serve {
        /// YAML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate configuration files: print a one-line summary each, or every problem and exit 1.
    CheckConfig {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the configuration reference (Markdown) generated from the schema.
    ConfigReference,
    /// Run a simulated vLLM replica: OpenAI API, vLLM metrics, continuous-batching timing.
    Sim(SimArgs),
    /// Send a bounded load of chat completions and report throughput and latency.
    Load(crate::loadgen::LoadArgs),
    /// Replay a workload (trace or generator) through the real router and scaler code against
    /// simulated replicas in virtual time; compare policies side by side.
    Simulate(crate::fleet_sim::SimulateArgs),
    /// Replay a workload (trace or generator) in real time against an OpenAI-compatible
    /// endpoint, streaming; report latencies as `simulate` does.
    Loadgen(crate::loadgen::ReplayArgs),
    /// Act on a running gateway: pause, resume or pin a pool's scaler, cordon, drain or
    /// uncordon a replica, reload the config; or print its status.
    Admin(crate::admin::client::AdminArgs),
}

/// Runs the command line and returns the process exit code.
pub fn run(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    telemetry::init_logging(cli.log_format);
    match cli.command {
        Command::CheckConfig { files } => check_config(&files),
        Command::ConfigReference => {
            print!("{}", config::reference_markdown());
            ExitCode::SUCCESS
        }
        Command::Serve { config } => report(serve(config)),
        Command::Sim(args) => report(run_sim(args)),
        Command::Load(args) => report(run_load(args)),
        Command::Simulate(args) => report(crate::fleet_sim::simulate(args)),
        Command::Loadgen(args) => report(run_loadgen(args)),
        Command::Admin(args) => report(run_admin(args)),
    }
}

fn run_admin(args: crate::admin::client::AdminArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime.block_on(crate::admin::client::run(args))?;
    println!("{}", answer.trim());
    Ok(())
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn check_config(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        match config::load(file) {
            Ok(config) => println!("{}: {}", file.display(), config.summary()),
            Err(errors) => {
                ok = false;
                eprint!("{errors}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<config::Config> {
    Ok(match path {
        Some(path) => config::load(&path)?,
        None => config::embedded_default(),
    })
}

fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(path.clone())?;
    tracing::info!("{}", config.summary());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let options = crate::app::Options {
            admin_token: std::env::var("INFERGATE_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty()),
            ..Default::default()
        };
        // Before anything says it listens: a SIGHUP that finds no handler terminates the
        // process (seen under load, a reload sent right after start killed the gateway).
        let mut hangups = hangups();
        let mut gateway = crate::app::start_with(config, options).await?;
        let scheme = match gateway.state.config.listeners.tls {
            Some(_) => "https",
            None => "http",
        };
        tracing::info!("gateway listening on {scheme}://{}", gateway.gateway_addr);
        tracing::info!(
            "admin listening on http://{} (/metrics, /healthz, /readyz, /admin/status, the status page /admin/page)",
            gateway.admin_addr
        );
        // Kept across reloads: an operator's reload action (`/admin/actions`) lands here too.
        let reloads = gateway.state.reloads.clone();
        loop {
            tokio::select! {
                () = shutdown_signal() => break,
                Some(()) = hangups.recv() => gateway = reload(gateway, path.as_deref()).await,
                () = reloads.requested() => gateway = reload(gateway, path.as_deref()).await,
            }
        }
        tracing::info!("shutting down: draining in-flight answers");
        gateway.shutdown().await;
        Ok(())
    })
}

/// SIGHUPs (what `systemctl reload` and most supervisors send), as a stream. The handler is
/// installed by the time this returns (not when a task first runs), so a SIGHUP from then on
/// is a reload, never the default action's termination.
fn hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        let kind = tokio::signal::unix::SignalKind::hangup();
        let Ok(mut hup) = tokio::signal::unix::signal(kind) else {
            tracing::warn!("cannot handle SIGHUP: reload through /admin/actions instead");
            return rx;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = tx.try_send(()); // one pending reload covers several signals
            }
        });
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// Re-reads the config file and applies it ([`crate::app::App::reload`]); a file that does not
/// validate or a config that cannot start is reported and the current one keeps serving.
async fn reload(gateway: crate::app::App, path: Option<&std::path::Path>) -> crate::app::App {
    let state = gateway.state.clone();
    // Told to chat by the gateway that serves on: the new one when applied.
    let outcome = |error: Option<String>, notifier: &crate::notify::Notifier| {
        let result = if error.is_none() {
            "applied"
        } else {
            "rejected"
        };
        state
            .metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
        let text = match &error {
            None => "configuration reloaded".to_string(),
            Some(e) => format!(
                "configuration reload rejected, the previous one keeps serving: {}",
                e.lines().take(3).collect::<Vec<_>>().join(" ")
            ),
        };
        notifier.send(crate::notify::Event::new(
            config::EventKind::Reload,
            None,
            text,
        ));
        state.reloads.record(error);
    };
    let Some(path) = path else {
        tracing::warn!("reload: the embedded default configuration has no file to reload");
        outcome(
            Some("no configuration file (the embedded default)".into()),
            &state.notifier,
        );
        return gateway;
    };
    let config = match config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            tracing::error!(
                "reload: {} is not applied; the previous configuration keeps serving:\n{errors}",
                path.display()
            );
            outcome(Some(errors.to_string()), &state.notifier);
            return gateway;
        }
    };
    let summary = config.summary();
    match gateway.reload(config).await {
        Ok(next) => {
            tracing::info!("reload: configuration reloaded: {summary}");
            outcome(None, &next.state.notifier);
            next
        }
        Err((previous, e)) => {
            tracing::error!(
                "reload: {} is not applied; the previous configuration keeps serving: {e:#}",
                path.display()
            );
            outcome(Some(format!("{e:#}")), &previous.state.notifier);
            previous
        }
    }
}

fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    let opts = sim_options(args)?;
    // One thread: a fleet of simulators shares a small machine.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let drain = opts.drain_timeout;
        let server = crate::vllm_sim::start(opts.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
        println!("listening on {}", server.addr);
        tracing::info!(addr = %server.addr, profile = opts.profile.name, speed = opts.speed, "simulator ready");
        shutdown_signal().await;
        tracing::info!("shutting down: finishing running requests");
        server.shutdown(drain).await;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn run_loadgen(args: crate::loadgen::ReplayArgs) -> anyhow::Result<()> {
    let out = args.out.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(crate::loadgen::replay(args))?;
    println!("{}", crate::fleet_sim::table(std::slice::from_ref(&report)));
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn run_load(args: crate::loadgen::LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(crate::loadgen::run(args, |done, failed| {
        eprintln!("  {done} done, {failed} failed");
    }))?;
    println!("{}", report.render());
    anyhow::ensure!(report.failed == 0, "{} requests failed", report.failed);
    Ok(())
}
