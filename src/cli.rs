//! Command-line interface: the subcommands, their flags and help, and the one place that turns
//! an error into a message and an exit code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;
use crate::telemetry::{self, LogFormat};

const EXAMPLES: &str = "\
Examples:
  infergate serve                          # local fleet of simulated replicas, autoscaled
  infergate serve --config gateway.yaml    # your own pools
  infergate check-config config/*.yaml     # validate config files, list every problem
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
    }
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
    let config = load_config(path)?;
    tracing::info!("{}", config.summary());
    anyhow::bail!("serving is not built yet")
}
