//! One request in flight on a replica, held by an RAII guard ([`InflightGuard`]) until the
//! answer's body ends: starting it counts it (in flight, pending prefill, pending streams),
//! its first byte ends its prefill and teaches the replica its prefill speed, a streamed
//! chunk's gap its engine step; dropping it releases it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Replica;

impl Replica {
    /// Counts a streamed request with `prefill_tokens` of prompt to compute as in flight, and
    /// its prefill as pending until its first byte, until the guard is dropped.
    pub fn start_request_with(self: &Arc<Self>, prefill_tokens: u64) -> InflightGuard {
        self.start(prefill_tokens, true)
    }

    /// Counts a request whose answer is not streamed as in flight until the guard is dropped.
    /// Its first byte comes with its end, after every token was generated: it says nothing about
    /// when the prefill ran, so the request is not counted as waiting or as prefill work ahead
    /// (the replica's pages show where it is), and it teaches no prefill speed.
    pub fn start_unstreamed_request(self: &Arc<Self>, prefill_tokens: u64) -> InflightGuard {
        self.start(prefill_tokens, false)
    }

    fn start(self: &Arc<Self>, prefill_tokens: u64, streamed: bool) -> InflightGuard {
        let step_at_dispatch = self.expected_step();
        self.inflight.inc();
        self.pending_requests.fetch_add(1, Ordering::Relaxed);
        let ahead = if streamed {
            self.pending_streams.fetch_add(1, Ordering::Relaxed);
            // What every gateway has queued there (the peers' as last heard): a first byte
            // that waited behind a peer's prefill must not teach that this replica is slow.
            self.pending_prefill
                .fetch_add(prefill_tokens, Ordering::Relaxed)
                + self.peer_pending_prefill.load(Ordering::Relaxed)
        } else {
            0 // learns nothing, so needs no count of what was ahead
        };
        ewma_f64(&self.mean_prompt_tokens, prefill_tokens as f64);
        InflightGuard {
            replica: self.clone(),
            prefill_tokens,
            ahead_at_dispatch: ahead,
            step_at_dispatch,
            prefill_done: false,
            streamed,
        }
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InflightGuard {
        self.start_request_with(0)
    }

    /// A request's prefill ended (first byte, or the request ended without one).
    fn prefill_ended(&self, tokens: u64, streamed: bool) {
        self.pending_requests.fetch_sub(1, Ordering::Relaxed);
        if streamed {
            self.pending_prefill.fetch_sub(tokens, Ordering::Relaxed);
            self.pending_streams.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Holds one in-flight request on a replica; dropping it (answer ended, client gone, error)
/// releases it.
#[derive(Debug)]
pub struct InflightGuard {
    replica: Arc<Replica>,
    prefill_tokens: u64,
    /// Prefill tokens already pending on the replica when this request was sent.
    ahead_at_dispatch: u64,
    /// [`Replica::expected_step`] when the request was sent.
    step_at_dispatch: f64,
    prefill_done: bool,
    /// The answer streams; if not, its first byte is its end.
    streamed: bool,
}

/// Prefill work (tokens) below which a first byte teaches nothing about prefill speed: it is
/// mostly the engine step's fixed cost.
const MIN_WORK_TO_LEARN: f64 = 128.0;

/// Folds a sample into an f64 EWMA held as bits (weight 0.2; the first sample is taken as is).
fn ewma_f64(cell: &AtomicU64, sample: f64) {
    let old = f64::from_bits(cell.load(Ordering::Relaxed));
    let next = if old == 0.0 {
        sample
    } else {
        0.8 * old + 0.2 * sample
    };
    cell.store(next.to_bits(), Ordering::Relaxed);
}

impl InflightGuard {
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// The replica's first answer byte arrived `latency` after the request was sent: its
    /// prefill is done. The replica's prefill speed is learned from it: the time over the
    /// prefill work it waited for (what was pending ahead of it plus its own).
    pub fn first_byte(&mut self, latency: std::time::Duration) {
        if self.prefill_done {
            return;
        }
        self.prefill_done = true;
        self.replica
            .prefill_ended(self.prefill_tokens, self.streamed);
        if !self.streamed {
            return; // the whole answer's time, not the prefill's
        }
        // The prefill speed is what the first byte took beyond the step it had to wait out,
        // per token of prefill work: a fully cached prompt (1 token of work, a whole step of
        // waiting) says nothing about prefill speed and must not make the replica look slow.
        let work = (self.ahead_at_dispatch + self.prefill_tokens) as f64;
        if work >= MIN_WORK_TO_LEARN {
            let prefill_secs = (latency.as_secs_f64() - self.step_at_dispatch).max(0.0);
            ewma_f64(&self.replica.first_byte_secs, prefill_secs);
            ewma_f64(&self.replica.first_byte_work, work);
        }
    }
}

impl InflightGuard {
    /// A streamed answer's next chunk came `gap` after the previous one: one engine step.
    pub fn chunk_gap(&self, gap: std::time::Duration) {
        ewma_f64(&self.replica.step_secs, gap.as_secs_f64());
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if !self.prefill_done {
            self.replica
                .prefill_ended(self.prefill_tokens, self.streamed);
        }
        self.replica.inflight.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::replica;

    #[test]
    fn prefill_speed_ignores_tiny_prefills_and_the_step_waited_out() {
        let r = replica();
        let close = |v: Option<f64>, want: f64| v.is_some_and(|v| (v - want).abs() < 1e-12);
        r.start_request_with(1000)
            .first_byte(Duration::from_millis(50));
        assert!(close(r.secs_per_token(), 50e-6), "{:?}", r.secs_per_token());
        // A fully cached prompt (1 token of work) that took a whole 30 ms step: nothing learned.
        r.start_request_with(1)
            .first_byte(Duration::from_millis(30));
        assert!(close(r.secs_per_token(), 50e-6), "{:?}", r.secs_per_token());
        // A stream runs there with 40 ms steps: a new request waits one out before its own
        // prefill, so 90 ms for 1000 tokens is still 50 µs a token.
        let stream = r.start_request_with(0);
        stream.chunk_gap(Duration::from_millis(40));
        assert_eq!(r.expected_step(), 0.04);
        r.start_request_with(1000)
            .first_byte(Duration::from_millis(90));
        assert!(close(r.secs_per_token(), 50e-6), "{:?}", r.secs_per_token());
        drop(stream);
        assert_eq!(
            r.expected_step(),
            0.0,
            "nothing of ours runs: no step to wait out"
        );
        // A non-streamed answer's first byte comes after its last token: nothing learned.
        let mut whole = r.start_unstreamed_request(1000);
        whole.first_byte(Duration::from_secs(8));
        assert!(close(r.secs_per_token(), 50e-6), "{:?}", r.secs_per_token());
        assert_eq!(r.pending_prefill(), 0, "its wait ended all the same");
    }

    #[test]
    fn guards_count_exactly() {
        let r = replica();
        let a = r.start_request();
        let b = r.start_request();
        assert_eq!(r.inflight(), 2);
        drop(a);
        assert_eq!(r.inflight(), 1);
        drop(b);
        assert_eq!(r.inflight(), 0);
    }
}
