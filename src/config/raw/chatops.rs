//! The schema of the `chatops` section: chat webhooks told about events, and slash commands
//! taken from chat. Secrets (webhook URLs, signing secrets, tokens) are named by environment
//! variable or file, never written in the config.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Quantity;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawChatops {
    /// Chat webhooks to tell about events (none: no notifications).
    pub notify: Vec<RawWebhook>,
    /// Slash commands from chat, taken at `/chat/slack` and `/chat/mattermost` on the admin
    /// listener (authenticated by the platform's signature or token, not the admin token).
    pub commands: RawChatCommands,
}

/// The body a webhook is sent.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookFormat {
    /// Slack incoming webhook: `{"text": ...}`.
    #[default]
    Slack,
    /// Mattermost incoming webhook: `{"text": ..., "username": "infergate"}`.
    Mattermost,
    /// `{"source": "infergate", "gateway": id, "events": [{"at", "kind", "pool", "text"}]}`
    /// (`at` in Unix seconds; docs/config.md lists the kinds).
    Json,
}

/// What happened, as chat is told.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A pool scaled up or down (with the scaler's reason).
    Scale,
    /// A replica was ejected from routing (failures) — or came back.
    Ejection,
    /// The configuration was reloaded, or a reload was rejected.
    Reload,
    /// An operator acted (`/admin/actions`, `infergate admin`, chat commands).
    Action,
    /// This gateway became the leader (it resizes pools) or lost the lease.
    Leader,
    /// A pool's SLO attainment fell below its target over its window, or is back above.
    Slo,
    /// A canary rollout's steps and verdicts (`versions[].rollout`).
    Rollout,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawWebhook {
    /// Environment variable holding the webhook URL (a secret: it is never logged).
    pub url_env: Option<String>,
    /// Or a file holding it (e.g. a mounted Kubernetes Secret).
    pub url_file: Option<String>,
    pub format: WebhookFormat,
    /// The events this webhook wants; empty: all of them.
    pub events: Vec<EventKind>,
    /// At most one message per this interval (duration): events in between go together in
    /// the next, so a flapping replica cannot flood a channel.
    pub min_interval: Quantity,
}

impl Default for RawWebhook {
    fn default() -> Self {
        Self {
            url_env: None,
            url_file: None,
            format: WebhookFormat::default(),
            events: Vec::new(),
            min_interval: "10s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawChatCommands {
    /// Environment variable holding Slack's signing secret (requests are checked by their
    /// `X-Slack-Signature`; older than 5 minutes are refused). Unset: no Slack commands.
    pub slack_signing_secret_env: Option<String>,
    /// Or a file holding it.
    pub slack_signing_secret_file: Option<String>,
    /// Environment variable holding the Mattermost slash command's token. Unset: no
    /// Mattermost commands.
    pub mattermost_token_env: Option<String>,
    /// Or a file holding it.
    pub mattermost_token_file: Option<String>,
    /// Chat users (user ids or names) allowed each command — `status`, `scale`, `drain`,
    /// `rollout` — or
    /// `*` for everyone; a command not listed is allowed to nobody. `help` is open to all.
    pub allow: BTreeMap<String, Vec<String>>,
}
