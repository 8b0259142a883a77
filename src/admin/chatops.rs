//! Slash commands from chat (`/chat/slack`, `/chat/mattermost` on the admin listener): `status
//! [pool]`, `scale <pool> pin <n> | unpin`, `drain <replica>`, `rollout <model> promote |
//! abort`, `help`.
//!
//! A Slack request is taken only with a valid `X-Slack-Signature` (HMAC-SHA256 of
//! `v0:<timestamp>:<body>` with the signing secret) and a timestamp within 5 minutes; a
//! Mattermost request only with the command's token. Then the user must be on the command's
//! allow-list (`chatops.commands.allow`). The command goes through the same admin actions as
//! `/admin/actions` ([`super::actions`]); every command and its result is logged and
//! counted (`infergate_chat_commands_total`), and answered in the channel — refusals only to
//! the user who asked (ephemeral).

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::actions::{self, Action};
use crate::gateway::proxy::GatewayState;

/// Which chat platform a command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Slack,
    Mattermost,
}

impl Platform {
    fn name(self) -> &'static str {
        match self {
            Platform::Slack => "slack",
            Platform::Mattermost => "mattermost",
        }
    }
}

/// How old a signed Slack request may be (Slack's own advice: 5 minutes).
const MAX_AGE_SECS: u64 = 300;

/// A command's answer: the HTTP status and the chat message.
pub struct Answer {
    pub status: http::StatusCode,
    pub body: serde_json::Value,
}

fn answer(status: http::StatusCode, in_channel: bool, text: impl Into<String>) -> Answer {
    let response_type = if in_channel {
        "in_channel"
    } else {
        "ephemeral"
    };
    Answer {
        status,
        body: json!({"response_type": response_type, "text": text.into()}),
    }
}

/// Authenticates, authorises, runs and audits one slash command.
pub fn handle(
    state: &GatewayState,
    platform: Platform,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Answer {
    let commands = &state.config.chatops.commands;
    let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let audit = |command: &str, result: &str, detail: &str| {
        let user = field("user_name");
        tracing::info!(
            platform = platform.name(),
            user,
            user_id = field("user_id"),
            command,
            result,
            "chat command: {detail}"
        );
        state
            .metrics
            .chat_commands
            .with_label_values(&[command, result])
            .inc();
    };
    let verified = match platform {
        Platform::Slack => commands
            .slack_signing_secret
            .as_ref()
            .map(|secret| slack_signed(&secret.0, headers, body, crate::openai::unix_seconds())),
        Platform::Mattermost => commands.mattermost_token.as_ref().map(|token| {
            // Compared by digest: no early exit on the token's bytes.
            let given = crate::gateway::auth::digest(field("token"));
            (given == crate::gateway::auth::digest(&token.0))
                .then_some(())
                .ok_or("wrong token")
        }),
    };
    match verified {
        None => {
            audit("-", "unauthenticated", "not configured");
            return answer(
                http::StatusCode::NOT_FOUND,
                false,
                format!("{} commands are not configured", platform.name()),
            );
        }
        Some(Err(why)) => {
            audit("-", "unauthenticated", why);
            return answer(http::StatusCode::UNAUTHORIZED, false, why);
        }
        Some(Ok(())) => {}
    }
    let words: Vec<&str> = field("text").split_whitespace().collect();
    let command = words.first().copied().unwrap_or("help");
    let allowed = |command: &str| {
        commands.allow.get(command).is_some_and(|users| {
            users
                .iter()
                .any(|u| u == "*" || u == field("user_id") || u == field("user_name"))
        })
    };
    let by = format!("{}:{}", platform.name(), field("user_name"));
    let result: Result<(bool, String), String> = match (command, &words[1..]) {
        ("help", _) => Ok((false, HELP.to_string())),
        (known @ ("status" | "scale" | "drain"), _) if !allowed(known) => {
            Err(format!("you are not allowed to use `{known}`"))
        }
        ("status", rest) => status(state, rest.first().copied()).map(|t| (true, t)),
        ("scale", [pool, "pin", n]) => match n.parse() {
            Ok(replicas) => act(
                state,
                Action::Pin {
                    pool: pool.to_string(),
                    replicas,
                },
                &by,
            ),
            Err(_) => Err(format!("`{n}` is not a replica count")),
        },
        ("scale", [pool, "unpin"]) => act(
            state,
            Action::Unpin {
                pool: pool.to_string(),
            },
            &by,
        ),
        ("drain", [replica]) => match pool_of(state, replica) {
            Some(pool) => act(
                state,
                Action::Drain {
                    pool,
                    replica: replica.to_string(),
                },
                &by,
            ),
            None => Err(format!("no pool has a replica {replica}")),
        },
        ("rollout", [model, verb @ ("promote" | "abort")]) if allowed("rollout") => {
            let action = if *verb == "promote" {
                Action::Promote {
                    model: model.to_string(),
                }
            } else {
                Action::Abort {
                    model: model.to_string(),
                }
            };
            act(state, action, &by)
        }
        ("rollout", _) if !allowed("rollout") => Err("you are not allowed to use `rollout`".into()),
        ("rollout", _) => Err("usage: `rollout <model> promote | abort`".into()),
        _ => Err(format!("cannot read `{}`; try `help`", field("text"))),
    };
    let command = match command {
        "help" | "status" | "scale" | "drain" | "rollout" => command,
        _ => "unknown",
    };
    match result {
        Ok((in_channel, text)) => {
            audit(command, "done", &text);
            answer(http::StatusCode::OK, in_channel, text)
        }
        Err(text) => {
            audit(command, "refused", &text);
            // Chat shows a command's answer only with 200; the refusal is in the text.
            answer(http::StatusCode::OK, false, text)
        }
    }
}

const HELP: &str = "`status [pool]`: pools, replicas, the scaler's last decision\n\
`scale <pool> pin <n>`: hold the pool at n replicas · `scale <pool> unpin`: the scaler decides\n\
`drain <replica>`: no new requests to it; `status` shows when it is idle\n\
`rollout <model> promote | abort`: end a canary rollout now";

fn act(state: &GatewayState, action: Action, by: &str) -> Result<(bool, String), String> {
    actions::apply(state, action, by)
        .map(|text| (true, text))
        .map_err(|e| e.to_string())
}

fn pool_of(state: &GatewayState, replica: &str) -> Option<String> {
    state
        .pools
        .live()
        .find(|p| p.snapshot().replicas.iter().any(|r| r.name == replica))
        .map(|p| p.name().to_string())
}

/// One line per pool (or the one asked for): replicas, in flight, queued, the scaler's word.
fn status(state: &GatewayState, only: Option<&str>) -> Result<String, String> {
    let now = std::time::Instant::now();
    let lines: Vec<String> = state
        .pools
        .live()
        .filter(|p| only.is_none_or(|name| p.name() == name))
        .map(|p| {
            let snapshot = p.snapshot();
            let routed = snapshot
                .replicas
                .iter()
                .filter(|r| r.takes_traffic(now))
                .count();
            let inflight: u64 = snapshot.replicas.iter().map(|r| r.cluster_inflight()).sum();
            let scaler = p.scaler_status.load();
            let decision = scaler
                .as_deref()
                .map(|s| format!("; scaler wants {} ({})", s.desired, s.reason))
                .unwrap_or_default();
            format!(
                "*{}*: {routed}/{} replicas routed, {inflight} in flight, {} queued{decision}",
                p.name(),
                snapshot.replicas.len(),
                p.queued()
            )
        })
        .collect();
    match (lines.is_empty(), only) {
        (true, Some(name)) => Err(format!("no pool named {name}")),
        _ => Ok(lines.join("\n")),
    }
}

/// Checks Slack's signature of `body` at `now` (Unix seconds).
fn slack_signed(
    secret: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    now: u64,
) -> Result<(), &'static str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let timestamp: u64 = header("x-slack-request-timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or("no request timestamp")?;
    if now.abs_diff(timestamp) > MAX_AGE_SECS {
        return Err("the request is older than 5 minutes");
    }
    let signature = header("x-slack-signature")
        .and_then(|s| s.strip_prefix("v0="))
        .and_then(hex)
        .ok_or("no signature")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    // Constant-time comparison.
    mac.verify_slice(&signature).map_err(|_| "wrong signature")
}

fn hex(text: &str) -> Option<Vec<u8>> {
    text.len()
        .is_multiple_of(2)
        .then(|| {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

/// Slack's signature of `body` at `timestamp` (for tests and tools that send commands).
pub fn slack_signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("v0={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_signatures_are_checked_with_the_secret_and_the_clock() {
        // Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack).
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let at = 1_531_420_618;
        let mut headers = http::HeaderMap::new();
        headers.insert("x-slack-request-timestamp", at.to_string().parse().unwrap());
        headers.insert(
            "x-slack-signature",
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
                .parse()
                .unwrap(),
        );
        assert_eq!(slack_signed(secret, &headers, body, at + 10), Ok(()));
        assert_eq!(
            slack_signature(secret, at, body),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
        assert_eq!(
            slack_signed(secret, &headers, body, at + 301),
            Err("the request is older than 5 minutes")
        );
        assert_eq!(
            slack_signed("another secret", &headers, body, at),
            Err("wrong signature")
        );
        assert_eq!(
            slack_signed(secret, &headers, b"token=changed", at),
            Err("wrong signature")
        );
    }
}
