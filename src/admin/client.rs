//! `infergate admin ...`: sends one [`Action`] to a running gateway's admin listener
//! (`POST /admin/actions`, with `INFERGATE_ADMIN_TOKEN` as the bearer token when set), or reads
//! its `/admin/status`, and prints the answer.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::actions::Action;

/// `infergate admin`'s flags.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The gateway's admin listener.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    pub admin_url: String,
    /// Bearer token (else the environment's INFERGATE_ADMIN_TOKEN).
    #[arg(long, env = "INFERGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Print the gateway's status (JSON).
    Status,
    /// Stop a pool's scaler from resizing (it still recommends).
    Pause { pool: String },
    /// Let a paused scaler act again.
    Resume { pool: String },
    /// Have a pool's scaler ask for exactly this many replicas.
    Pin { pool: String, replicas: u32 },
    /// Give the count back to the scaler.
    Unpin { pool: String },
    /// Send no new requests to a replica (by address, as `status` names it).
    Cordon { pool: String, replica: String },
    /// Cordon a replica; `status` shows `drained` once nothing runs there.
    Drain { pool: String, replica: String },
    /// Send requests to a cordoned replica again.
    Uncordon { pool: String, replica: String },
    /// Re-read the configuration file, as SIGHUP does.
    Reload,
    /// Promote a split model's canary now.
    Promote { model: String },
    /// Abort a split model's rollout (the canary gets no more traffic).
    Abort { model: String },
}

impl AdminCommand {
    fn action(self) -> Option<Action> {
        Some(match self {
            AdminCommand::Status => return None,
            AdminCommand::Pause { pool } => Action::Pause { pool },
            AdminCommand::Resume { pool } => Action::Resume { pool },
            AdminCommand::Pin { pool, replicas } => Action::Pin { pool, replicas },
            AdminCommand::Unpin { pool } => Action::Unpin { pool },
            AdminCommand::Cordon { pool, replica } => Action::Cordon { pool, replica },
            AdminCommand::Drain { pool, replica } => Action::Drain { pool, replica },
            AdminCommand::Uncordon { pool, replica } => Action::Uncordon { pool, replica },
            AdminCommand::Reload => Action::Reload,
            AdminCommand::Promote { model } => Action::Promote { model },
            AdminCommand::Abort { model } => Action::Abort { model },
        })
    }
}

/// Sends the command; Ok with the answer's text when the gateway did it.
pub async fn run(args: AdminArgs) -> anyhow::Result<String> {
    let base = args.admin_url.trim_end_matches('/');
    let (method, path, body) = match args.command.action() {
        Some(action) => (
            http::Method::POST,
            "/admin/actions",
            Bytes::from(serde_json::to_vec(&action)?),
        ),
        None => (http::Method::GET, "/admin/status", Bytes::new()),
    };
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(token) = &args.token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(request.body(Full::new(body))?)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {base}: {e}"))?;
    let status = response.status();
    let text =
        String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes()).into_owned();
    anyhow::ensure!(status.is_success(), "{status}: {}", text.trim());
    Ok(text)
}
