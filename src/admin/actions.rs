//! What an operator can do to a running gateway, one implementation for every way in:
//! `POST /admin/actions` on the admin listener (a JSON [`Action`]), which `infergate admin ...`
//! sends. Pause or resume a pool's scaler (it keeps recommending; nothing is resized), pin its
//! replica count (the scaler asks for exactly that many) or unpin it, cordon a replica (no new
//! requests; those running finish), drain it (cordon, and `/admin/status` says when nothing of
//! any gateway's runs there), uncordon it, reload the configuration file.
//!
//! Every action is logged (who, what, the result) and the last ones are shown in
//! `/admin/status`. Pauses, pins and cordons belong to this gateway process's pools: a reload
//! or a restart starts from the config file again.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use crate::gateway::proxy::GatewayState;
use crate::pool::PoolState;

/// One operator action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    /// The pool's scaler stops resizing (it still recommends).
    Pause {
        pool: String,
    },
    Resume {
        pool: String,
    },
    /// The pool's scaler asks for exactly `replicas` (0 to `max_replicas`).
    Pin {
        pool: String,
        replicas: u32,
    },
    Unpin {
        pool: String,
    },
    /// No new requests go to the replica (by name: its address).
    Cordon {
        pool: String,
        replica: String,
    },
    /// Cordon, to take the replica away once idle (`/admin/status`: `drained`).
    Drain {
        pool: String,
        replica: String,
    },
    Uncordon {
        pool: String,
        replica: String,
    },
    /// Re-read the configuration file, as SIGHUP does.
    Reload,
    /// Promote the canary of the split model's rollout now (all traffic).
    Promote {
        model: String,
    },
    /// Abort the split model's rollout: the canary is rolled back (no traffic).
    Abort {
        model: String,
    },
}

/// Why an action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

/// An operator's hold on a pool's scaler.
#[derive(Debug, Default)]
pub struct ScalerHold {
    paused: AtomicBool,
    /// The pinned count plus one (0: not pinned).
    pinned: AtomicU32,
}

impl ScalerHold {
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    pub fn pinned(&self) -> Option<u32> {
        self.pinned.load(Ordering::Relaxed).checked_sub(1)
    }
}

/// The actions done, newest last, for `/admin/status` (bounded).
#[derive(Default)]
pub struct ActionLog {
    entries: Mutex<VecDeque<Done>>,
}

/// One action done or refused.
#[derive(Debug, Clone, Serialize)]
pub struct Done {
    /// Unix seconds.
    pub at: u64,
    /// Who asked (the client's address).
    pub by: String,
    pub action: Action,
    pub ok: bool,
    pub result: String,
}

const LOG_LENGTH: usize = 50;

impl ActionLog {
    fn record(&self, done: Done) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == LOG_LENGTH {
            entries.pop_front();
        }
        entries.push_back(done);
    }

    pub fn recent(&self) -> Vec<Done> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().cloned().collect()
    }
}

/// Does `action` for `by`, logs it and returns what happened.
pub fn apply(state: &GatewayState, action: Action, by: &str) -> Result<String, ActionError> {
    let result = act(state, &action);
    let (ok, text) = match &result {
        Ok(message) => (true, message.clone()),
        Err(e) => (false, e.to_string()),
    };
    if ok {
        tracing::info!(by, ?action, "admin action: {text}");
    } else {
        tracing::warn!(by, ?action, "admin action refused: {text}");
    }
    state.notifier.send(crate::notify::Event::new(
        crate::config::EventKind::Action,
        None,
        format!("{by}: {text}"),
    ));
    state.actions.record(Done {
        at: crate::openai::unix_seconds(),
        by: by.to_string(),
        action,
        ok,
        result: text,
    });
    result
}

fn act(state: &GatewayState, action: &Action) -> Result<String, ActionError> {
    match action {
        Action::Promote { model } | Action::Abort { model } => {
            let promote = matches!(action, Action::Promote { .. });
            let rollout = state
                .pools
                .route(model)
                .and_then(|r| r.route.split.as_ref()?.rollout.clone())
                .ok_or_else(|| ActionError::NotFound(format!("{model} has no rollout")))?;
            if !rollout.ask(promote) {
                return Err(ActionError::Invalid(format!(
                    "the rollout of {model} is over"
                )));
            }
            Ok(format!(
                "{model}: {} asked; the rollout acts within a second",
                if promote { "promotion" } else { "rollback" }
            ))
        }
        Action::Reload => {
            state.reloads.request();
            Ok("reload requested".into())
        }
        Action::Pause { pool } => {
            scaler_hold(state, pool)?
                .paused
                .store(true, Ordering::Relaxed);
            Ok(format!(
                "pool {pool}: the scaler is paused (it still recommends)"
            ))
        }
        Action::Resume { pool } => {
            scaler_hold(state, pool)?
                .paused
                .store(false, Ordering::Relaxed);
            Ok(format!("pool {pool}: the scaler acts again"))
        }
        Action::Pin { pool, replicas } => {
            let p = find_pool(state, pool)?;
            let max = p.config.scaler.max_replicas;
            if *replicas > max {
                return Err(ActionError::Invalid(format!(
                    "pool {pool}: cannot pin {replicas} replicas, scaler.max_replicas is {max}"
                )));
            }
            scaler_hold(state, pool)?
                .pinned
                .store(replicas + 1, Ordering::Relaxed);
            Ok(format!("pool {pool}: pinned at {replicas} replicas"))
        }
        Action::Unpin { pool } => {
            scaler_hold(state, pool)?.pinned.store(0, Ordering::Relaxed);
            Ok(format!("pool {pool}: unpinned, the scaler decides"))
        }
        Action::Cordon { pool, replica }
        | Action::Drain { pool, replica }
        | Action::Uncordon { pool, replica } => {
            let p = find_pool(state, pool)?;
            let snapshot = p.snapshot();
            let r = snapshot
                .replicas
                .iter()
                .find(|r| &r.name == replica)
                .ok_or_else(|| {
                    ActionError::NotFound(format!("pool {pool} has no replica {replica}"))
                })?;
            let cordon = !matches!(action, Action::Uncordon { .. });
            r.set_cordoned(cordon);
            Ok(if cordon {
                format!(
                    "{replica}: no new requests; {} in flight from all gateways",
                    r.cluster_inflight()
                )
            } else {
                format!("{replica}: takes requests again")
            })
        }
    }
}

fn find_pool<'a>(state: &'a GatewayState, name: &str) -> Result<&'a PoolState, ActionError> {
    state
        .pools
        .live()
        .find(|p| p.name() == name)
        .map(|p| p.as_ref())
        .ok_or_else(|| ActionError::NotFound(format!("no pool named {name}")))
}

/// The pool's scaler hold; refused for a pool without a scaler.
fn scaler_hold<'a>(state: &'a GatewayState, name: &str) -> Result<&'a ScalerHold, ActionError> {
    let pool = find_pool(state, name)?;
    if !pool.config.scaler.enabled {
        return Err(ActionError::Invalid(format!(
            "pool {name} has no scaler (scaler.enabled is false)"
        )));
    }
    Ok(&pool.hold)
}

/// Whether a replica has nothing left to do: cordoned, nothing in flight from any gateway, and
/// its fresh page shows nothing running or waiting.
pub fn drained(
    replica: &crate::replica::Replica,
    now: std::time::Instant,
    stale: std::time::Duration,
) -> bool {
    replica.is_cordoned()
        && replica.cluster_inflight() == 0
        && replica
            .fresh_stats(now, stale)
            .is_some_and(|s| s.stats.running + s.stats.waiting < 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_as_operators_write_them() {
        let pin: Action =
            serde_json::from_str(r#"{"action": "pin", "pool": "p", "replicas": 3}"#).unwrap();
        assert_eq!(
            pin,
            Action::Pin {
                pool: "p".into(),
                replicas: 3
            }
        );
        let reload: Action = serde_json::from_str(r#"{"action": "reload"}"#).unwrap();
        assert_eq!(reload, Action::Reload);
        for bad in [
            r#"{"action": "pin", "pool": "p"}"#,
            r#"{"action": "explode", "pool": "p"}"#,
            r#"{"action": "pause", "pool": "p", "extra": 1}"#,
        ] {
            assert!(serde_json::from_str::<Action>(bad).is_err(), "{bad}");
        }
    }
}
