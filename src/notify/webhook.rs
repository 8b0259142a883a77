//! One webhook's sending task: waits for an event, sends it with everything else that came
//! within the webhook's `min_interval` since its last message (so a burst becomes one message),
//! formatted for Slack, Mattermost or as JSON; a failed send is retried with back-off, then
//! given up and counted.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use super::Event;
use crate::config::{Webhook, WebhookFormat};

/// Events listed in one chat message; more are counted.
const LISTED: usize = 10;
/// Attempts per message, and the longest a chat server may take to answer one.
const ATTEMPTS: u32 = 3;
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(
    hook: Webhook,
    gateway: String,
    mut events: mpsc::Receiver<Event>,
    failed: prometheus::IntCounter,
) {
    // Chat services are https: verified with the system's CA certificates (without any, only
    // http:// webhooks can be reached).
    let tls = crate::tls::client_config(&[])
        .map(|config| crate::tls::UpstreamTls {
            config,
            server_name: None,
        })
        .unwrap_or_else(|_| crate::tls::UpstreamTls::unused());
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(tls.connector());
    let mut last_sent: Option<tokio::time::Instant> = None;
    while let Some(first) = events.recv().await {
        // The first of a quiet spell goes at once; after a message, the rest wait out
        // `min_interval` and go together.
        if let Some(at) = last_sent {
            tokio::time::sleep_until(at + hook.min_interval).await;
        }
        let mut batch = vec![first];
        while let Ok(more) = events.try_recv() {
            batch.push(more);
        }
        let body = Bytes::from(message(hook.format, &gateway, &batch));
        last_sent = Some(tokio::time::Instant::now());
        if !send(&client, &hook, body).await {
            failed.inc();
        }
    }
}

/// Sends `body`, retrying after 1 s and 2 s; whether it was taken.
async fn send<C>(client: &Client<C, Full<Bytes>>, hook: &Webhook, body: Bytes) -> bool
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        let Ok(request) = http::Request::post(hook.url.0.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
        else {
            return false;
        };
        match tokio::time::timeout(SEND_TIMEOUT, client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => return true,
            // The URL is a secret: the status or the error kind only.
            Ok(Ok(response)) => {
                tracing::warn!(status = %response.status(), attempt, "chat webhook refused a message")
            }
            Ok(Err(_)) => tracing::warn!(attempt, "chat webhook unreachable"),
            Err(_) => tracing::warn!(attempt, "chat webhook did not answer in time"),
        }
    }
    false
}

/// The message for `events`, in the webhook's format.
pub fn message(format: WebhookFormat, gateway: &str, events: &[Event]) -> Vec<u8> {
    let value = match format {
        WebhookFormat::Json => serde_json::json!({
            "source": "infergate",
            "gateway": gateway,
            "events": events,
        }),
        WebhookFormat::Slack => serde_json::json!({"text": text(events)}),
        WebhookFormat::Mattermost => {
            serde_json::json!({"text": text(events), "username": "infergate"})
        }
    };
    serde_json::to_vec(&value).expect("JSON")
}

/// One line per event (the first [`LISTED`]), then how many more.
fn text(events: &[Event]) -> String {
    let mut lines: Vec<String> = events
        .iter()
        .take(LISTED)
        .map(|e| match &e.pool {
            Some(pool) => format!("[{pool}] {}", e.text),
            None => e.text.clone(),
        })
        .collect();
    if events.len() > LISTED {
        lines.push(format!("… and {} more", events.len() - LISTED));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EventKind;

    #[test]
    fn a_burst_is_one_message_listing_ten_and_counting_the_rest() {
        let events: Vec<Event> = (0..25)
            .map(|i| {
                Event::new(
                    EventKind::Ejection,
                    Some("p"),
                    format!("replica {i} ejected"),
                )
            })
            .collect();
        let slack: serde_json::Value =
            serde_json::from_slice(&message(WebhookFormat::Slack, "g", &events)).unwrap();
        let text = slack["text"].as_str().unwrap();
        assert_eq!(text.lines().count(), 11);
        assert!(text.starts_with("[p] replica 0 ejected\n"));
        assert!(text.ends_with("… and 15 more"));
        let json: serde_json::Value =
            serde_json::from_slice(&message(WebhookFormat::Json, "g", &events[..2])).unwrap();
        assert_eq!(json["gateway"], "g");
        assert_eq!(json["events"][1]["kind"], "ejection");
        assert_eq!(json["events"][1]["pool"], "p");
    }
}
