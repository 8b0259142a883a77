//! The LoRA adapters a replica likely holds: those its fresh scraped page shows running or
//! waiting, and those this gateway sent it lately (a ring of the last few, of which the
//! replica keeps its `max_lora` most recent loaded).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Replica;

/// How a LoRA adapter's name is known on the hot path.
pub fn adapter_id(name: &str) -> u64 {
    crate::openai::fnv1a(name.as_bytes())
}

/// Adapters this gateway remembers sending to each replica (the replica keeps its most
/// recently used ones loaded, `max_lora` of them).
pub(super) const RECENT_ADAPTERS: usize = 8;

/// vLLM's default `max_loras`, when a replica's page does not say.
const DEFAULT_MAX_LORAS: u32 = 4;

impl Replica {
    /// Notes that a request for LoRA adapter `adapter` was sent here (one after the other
    /// requests for the same adapter take no new place).
    pub fn note_adapter(&self, adapter: u64) {
        let sent = self.adapters_sent.load(Ordering::Relaxed);
        let last = (sent + RECENT_ADAPTERS as u64 - 1) % RECENT_ADAPTERS as u64;
        if sent > 0 && self.recent_adapters[last as usize].load(Ordering::Relaxed) == adapter {
            return;
        }
        let at = self.adapters_sent.fetch_add(1, Ordering::Relaxed) % RECENT_ADAPTERS as u64;
        self.recent_adapters[at as usize].store(adapter, Ordering::Relaxed);
    }

    /// Whether the replica likely has LoRA adapter `adapter` loaded: its fresh scrape shows it
    /// running or waiting, or it is among the `max_lora` adapters this gateway sent here last.
    pub fn holds_adapter(
        &self,
        adapter: u64,
        now: Instant,
        stale_after: std::time::Duration,
    ) -> bool {
        let guard = self.scraped.load();
        let scraped = guard.as_deref();
        if scraped.is_some_and(|s| {
            now.saturating_duration_since(s.at) <= stale_after && s.adapters.contains(&adapter)
        }) {
            return true;
        }
        let slots = scraped
            .and_then(|s| s.stats.max_loras)
            .unwrap_or(DEFAULT_MAX_LORAS)
            .min(RECENT_ADAPTERS as u32);
        let sent = self.adapters_sent.load(Ordering::Relaxed);
        (1..=u64::from(slots).min(sent)).any(|back| {
            let at = (sent - back) % RECENT_ADAPTERS as u64;
            self.recent_adapters[at as usize].load(Ordering::Relaxed) == adapter
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::EngineStats;
    use super::super::tests::replica;
    use super::*;

    #[test]
    fn adapters_are_held_when_scraped_or_sent_lately() {
        let r = replica();
        let now = Instant::now();
        let stale = Duration::from_secs(1);
        let (a, b, c) = (adapter_id("a"), adapter_id("b"), adapter_id("c"));
        assert!(!r.holds_adapter(a, now, stale));
        // Another gateway's traffic: the page shows `a` running.
        let stats = EngineStats {
            running_loras: vec!["a".into()],
            max_loras: Some(2),
            ..Default::default()
        };
        r.record_scrape(stats, now);
        assert!(r.holds_adapter(a, now, stale));
        // Sent by this gateway: the replica keeps its 2 (max_lora) most recent.
        r.note_adapter(b);
        r.note_adapter(b);
        r.note_adapter(c);
        assert!(r.holds_adapter(b, now, stale) && r.holds_adapter(c, now, stale));
        r.note_adapter(a);
        assert!(!r.holds_adapter(b, now, stale), "pushed out by c and a");
        // Once the scrape is stale only what was sent counts: c and a.
        let later = now + Duration::from_secs(2);
        assert!(r.holds_adapter(a, later, stale) && r.holds_adapter(c, later, stale));
        for name in ["d", "e"] {
            r.note_adapter(adapter_id(name));
        }
        assert!(!r.holds_adapter(a, later, stale));
    }
}
