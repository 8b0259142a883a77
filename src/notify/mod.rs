//! Telling chat what happened: scale-ups and -downs with the scaler's reason, ejections,
//! reloads and operator actions, to the webhooks of `chatops.notify`.
//!
//! [`Notifier::send`] never waits: each webhook has a bounded queue, and an event that finds it
//! full is dropped and counted (`infergate_notify_dropped_total`), so a hanging chat server can
//! never slow the data plane or the scaler. Each webhook's task ([`webhook`]) sends at most one
//! message per `min_interval`, with everything that happened since, and retries a failed send
//! with back-off.

pub mod webhook;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{EventKind, Webhook};

/// One thing chat is told.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    /// Unix seconds.
    pub at: u64,
    pub kind: EventKind,
    pub pool: Option<String>,
    pub text: String,
}

impl Event {
    pub fn new(kind: EventKind, pool: Option<&str>, text: impl Into<String>) -> Self {
        Self {
            at: crate::openai::unix_seconds(),
            kind,
            pool: pool.map(str::to_string),
            text: text.into(),
        }
    }
}

/// Events a webhook's queue holds before new ones are dropped.
const QUEUE: usize = 1024;

struct Sink {
    events: Vec<EventKind>,
    queue: mpsc::Sender<Event>,
}

/// Where events go: every configured webhook that wants them. Cheap to clone; without
/// webhooks, sending is a no-op.
#[derive(Clone, Default)]
pub struct Notifier {
    sinks: Arc<[Sink]>,
    dropped: Option<prometheus::IntCounterVec>,
}

impl Notifier {
    /// A notifier for `webhooks`, with one sending task each (returned, to be stopped with the
    /// gateway). `gateway` names this gateway in messages.
    pub fn start(
        webhooks: &[Webhook],
        gateway: &str,
        metrics: &crate::metrics::Metrics,
    ) -> (Self, Vec<JoinHandle<()>>) {
        let mut sinks = Vec::new();
        let mut tasks = Vec::new();
        for (i, hook) in webhooks.iter().enumerate() {
            let (tx, rx) = mpsc::channel(QUEUE);
            sinks.push(Sink {
                events: hook.events.clone(),
                queue: tx,
            });
            let failed = metrics.notify_failed.with_label_values(&[&i.to_string()]);
            tasks.push(tokio::spawn(webhook::run(
                hook.clone(),
                gateway.to_string(),
                rx,
                failed,
            )));
        }
        let notifier = Self {
            sinks: sinks.into(),
            dropped: Some(metrics.notify_dropped.clone()),
        };
        (notifier, tasks)
    }

    /// Queues `event` for every webhook that wants its kind; never waits.
    pub fn send(&self, event: Event) {
        for (i, sink) in self.sinks.iter().enumerate() {
            if !sink.events.is_empty() && !sink.events.contains(&event.kind) {
                continue;
            }
            if sink.queue.try_send(event.clone()).is_err()
                && let Some(dropped) = &self.dropped
            {
                dropped.with_label_values(&[&i.to_string()]).inc();
            }
        }
    }
}
