//! Local replicas: child processes started from a command template (by default this binary's
//! `sim` on a free port). A replica counts as started once it printed its address and answers
//! `/health` with 200; stopping sends SIGTERM and waits for it to finish its answers.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::config::LocalDiscovery;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{0}` exited before printing its address")]
    ExitedEarly(String),
    #[error("`{program}` did not print its address (host:port) within {timeout:?}")]
    NoAddress { program: String, timeout: Duration },
    #[error("replica at {addr} did not answer /health with 200 within {timeout:?}")]
    NotHealthy { addr: SocketAddr, timeout: Duration },
}

/// A running child replica.
#[derive(Debug)]
pub struct LocalReplica {
    pub addr: SocketAddr,
    child: Child,
}

/// The command line with `{infergate}` replaced by this executable.
fn command_line(config: &LocalDiscovery) -> Vec<String> {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "infergate".into());
    config
        .command
        .iter()
        .map(|a| a.replace("{infergate}", &exe))
        .collect()
}

/// Reads a `host:port` from a line such as `listening on 127.0.0.1:4000`.
pub fn address_in(line: &str) -> Option<SocketAddr> {
    line.split_whitespace().rev().find_map(|word| {
        word.trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .ok()
    })
}

/// Starts one replica and waits until it is healthy.
pub async fn start(config: &LocalDiscovery) -> Result<LocalReplica, LocalError> {
    let argv = command_line(config);
    let program = argv.first().cloned().unwrap_or_default();
    let mut child = Command::new(&program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env(
            "RUST_LOG",
            std::env::var("INFERGATE_REPLICA_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| LocalError::Spawn {
            program: program.clone(),
            source,
        })?;
    let deadline = Instant::now() + config.startup_timeout;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let addr = loop {
        match tokio::time::timeout_at(deadline.into(), lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                if let Some(addr) = address_in(&line) {
                    break addr;
                }
            }
            Ok(_) => return Err(LocalError::ExitedEarly(program)),
            Err(_) => {
                return Err(LocalError::NoAddress {
                    program,
                    timeout: config.startup_timeout,
                });
            }
        }
    };
    // Keep reading what the child prints so it never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(replica = %addr, "{line}");
        }
    });
    let mut replica = LocalReplica { addr, child };
    if !wait_healthy(addr, deadline).await {
        replica.kill().await;
        return Err(LocalError::NotHealthy {
            addr,
            timeout: config.startup_timeout,
        });
    }
    Ok(replica)
}

/// Polls `/health` every 50 ms until it answers 200 or `deadline` passes.
pub async fn wait_healthy(addr: SocketAddr, deadline: Instant) -> bool {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{addr}/health").parse().expect("valid URI");
    while Instant::now() < deadline {
        if let Ok(Ok(response)) =
            tokio::time::timeout(Duration::from_secs(1), client.get(uri.clone())).await
            && response.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

impl LocalReplica {
    /// The replica's address as the gateway names it (`host:port`).
    pub fn authority(&self) -> http::uri::Authority {
        http::uri::Authority::try_from(self.addr.to_string())
            .expect("a socket address is an authority")
    }

    /// SIGTERM, then wait up to `drain` for the replica to finish its answers and exit; kill it
    /// after that.
    pub async fn stop(mut self, drain: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(drain, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }

    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_found_in_announcement_lines() {
        assert_eq!(
            address_in("listening on 127.0.0.1:4000"),
            Some("127.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(
            address_in("ready at http://[::1]:80/"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(address_in("loading weights"), None);
    }
}
