//! Checks of the `chatops` section: each secret named by exactly one of an environment
//! variable or a file, and readable now; known commands in the allow-list.

use super::Checker;
use crate::config::raw::{RawChatCommands, RawChatops};
use crate::config::types::{ChatCommands, Chatops, Secret, Webhook};

/// The commands an allow-list may name (`help` is open to all).
pub const COMMANDS: [&str; 4] = ["status", "scale", "drain", "rollout"];

pub(super) fn chatops(c: &mut Checker, raw: &RawChatops) -> Chatops {
    let notify = raw
        .notify
        .iter()
        .enumerate()
        .filter_map(|(i, hook)| {
            let p = format!("chatops.notify[{i}]");
            let url = secret(c, &p, "url", &hook.url_env, &hook.url_file, true)?;
            if !(url.0.starts_with("http://") || url.0.starts_with("https://")) {
                c.fail(
                    format!("{p}.url_env"),
                    "the webhook URL must start with http:// or https://",
                );
            }
            Some(Webhook {
                url,
                format: hook.format,
                events: hook.events.clone(),
                min_interval: c.duration(format!("{p}.min_interval"), &hook.min_interval),
            })
        })
        .collect();
    Chatops {
        notify,
        commands: commands(c, &raw.commands),
    }
}

fn commands(c: &mut Checker, raw: &RawChatCommands) -> ChatCommands {
    let p = "chatops.commands";
    for command in raw.allow.keys() {
        if !COMMANDS.contains(&command.as_str()) {
            c.fail(
                format!("{p}.allow.{command}"),
                format!("unknown command (known: {})", COMMANDS.join(", ")),
            );
        }
    }
    ChatCommands {
        slack_signing_secret: secret(
            c,
            p,
            "slack_signing_secret",
            &raw.slack_signing_secret_env,
            &raw.slack_signing_secret_file,
            false,
        ),
        mattermost_token: secret(
            c,
            p,
            "mattermost_token",
            &raw.mattermost_token_env,
            &raw.mattermost_token_file,
            false,
        ),
        allow: raw.allow.clone(),
    }
}

/// The secret `<name>_env` or `<name>_file` names, read now; `required`: one of them must be
/// given. Problems name the variable or file, never the value.
fn secret(
    c: &mut Checker,
    path: &str,
    name: &str,
    env: &Option<String>,
    file: &Option<String>,
    required: bool,
) -> Option<Secret> {
    let value = match (env, file) {
        (Some(_), Some(_)) => {
            c.fail(
                format!("{path}.{name}_env"),
                format!("give either {name}_env or {name}_file, not both"),
            );
            return None;
        }
        (None, None) => {
            if required {
                c.fail(
                    format!("{path}.{name}_env"),
                    format!("{name}_env or {name}_file is required"),
                );
            }
            return None;
        }
        (Some(var), None) => std::env::var(var).map_err(|_| {
            (
                format!("{path}.{name}_env"),
                format!("the environment variable {var} is not set"),
            )
        }),
        (None, Some(file)) => std::fs::read_to_string(file).map_err(|e| {
            (
                format!("{path}.{name}_file"),
                format!("cannot read {file}: {e}"),
            )
        }),
    };
    match value.map(|v| v.trim().to_string()) {
        Ok(v) if !v.is_empty() => Some(Secret(v)),
        Ok(_) => {
            c.fail(format!("{path}.{name}_env"), format!("the {name} is empty"));
            None
        }
        Err((at, message)) => {
            c.fail(at, message);
            None
        }
    }
}
