//! Runs an [`Engine`] in real time: one task owns the engine, takes submissions and aborts over a
//! channel, sleeps until each step ends (scaled by `--speed`), then hands each request its
//! events. It also keeps `/metrics` and the GPU-busy share current.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::engine::{Engine, EngineRequest, Event};
use super::metrics::SimMetrics;

pub enum Command {
    Submit(EngineRequest, mpsc::UnboundedSender<Event>),
    Abort(u64),
}

/// Busy time of the engine, for the GPU-use gauge: total busy nanoseconds (wall clock) and the
/// sample taken at the previous scrape.
#[derive(Default)]
pub struct BusyClock {
    busy_ns: AtomicU64,
    last_wall_ns: AtomicU64,
    last_busy_ns: AtomicU64,
    last_percent_bits: AtomicU64,
}

impl BusyClock {
    /// Share of wall time the engine was busy since the previous call (in %), over at least
    /// 50 ms (a faster scrape gets the previous figure).
    pub fn percent_since_last(&self, wall_ns: u64) -> f64 {
        let busy = self.busy_ns.load(Ordering::Relaxed);
        let last_wall = self.last_wall_ns.load(Ordering::Relaxed);
        let elapsed = wall_ns.saturating_sub(last_wall);
        if elapsed < 50_000_000 {
            return f64::from_bits(self.last_percent_bits.load(Ordering::Relaxed));
        }
        let last_busy = self.last_busy_ns.swap(busy, Ordering::Relaxed);
        self.last_wall_ns.store(wall_ns, Ordering::Relaxed);
        let percent = (100.0 * busy.saturating_sub(last_busy) as f64 / elapsed as f64).min(100.0);
        self.last_percent_bits
            .store(percent.to_bits(), Ordering::Relaxed);
        percent
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The most a late timer wake-up is made up for by starting the next step in the past.
const MAX_CATCH_UP: Duration = Duration::from_millis(3);

/// Starts the engine task. Engine time is wall time since `epoch` multiplied by `speed`.
pub fn spawn(
    mut engine: Engine,
    speed: f64,
    metrics: Arc<SimMetrics>,
    busy: Arc<BusyClock>,
    epoch: Instant,
) -> mpsc::UnboundedSender<Command> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
    let engine_now = move || epoch.elapsed().as_secs_f64() * speed;
    tokio::spawn(async move {
        let mut listeners: HashMap<u64, mpsc::UnboundedSender<Event>> = HashMap::new();
        // Where the step just run ended, while the engine stays busy.
        let mut previous_end: Option<f64> = None;
        loop {
            // A busy engine starts its next step where the last one ended, not when the timer
            // woke this task: tokio's timer wakes up to a millisecond late, which stretched
            // every step (measured: 9.2 ms between tokens where the model says 8.0). A wake-up
            // later than that is time the process did not get, and is not made up.
            let wall = engine_now();
            let now = match previous_end.take() {
                Some(end) if wall - end <= MAX_CATCH_UP.as_secs_f64() * speed => end,
                _ => wall,
            };
            let step = if engine.has_work() {
                engine.step(now)
            } else {
                None
            };
            let Some(step) = step else {
                // Idle, or blocked until something changes: wait for a command.
                metrics.update(&engine.stats(), unix_now());
                let Some(command) = rx.recv().await else {
                    return; // the server is gone
                };
                apply(command, &mut engine, &mut listeners, engine_now());
                while let Ok(more) = rx.try_recv() {
                    apply(more, &mut engine, &mut listeners, engine_now());
                }
                metrics.update(&engine.stats(), unix_now());
                continue;
            };
            let started = Instant::now();
            tokio::time::sleep_until((epoch + Duration::from_secs_f64(step.end / speed)).into())
                .await;
            busy.busy_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            for event in step.events {
                deliver(event, &mut engine, &mut listeners, &metrics);
            }
            // Commands that arrived during the step join the next one.
            while let Ok(command) = rx.try_recv() {
                apply(command, &mut engine, &mut listeners, step.end);
            }
            metrics.update(&engine.stats(), unix_now());
            previous_end = Some(step.end);
        }
    });
    tx
}

fn apply(
    command: Command,
    engine: &mut Engine,
    listeners: &mut HashMap<u64, mpsc::UnboundedSender<Event>>,
    now: f64,
) {
    match command {
        Command::Submit(req, events) => {
            listeners.insert(req.id, events);
            engine.submit(req, now);
        }
        Command::Abort(id) => {
            listeners.remove(&id);
            engine.abort(id);
        }
    }
}

fn deliver(
    event: Event,
    engine: &mut Engine,
    listeners: &mut HashMap<u64, mpsc::UnboundedSender<Event>>,
    metrics: &SimMetrics,
) {
    let (id, finished) = match &event {
        Event::Token { id, gap, .. } => {
            if let Some(gap) = gap {
                metrics.observe_token_gap(*gap);
            }
            (*id, false)
        }
        Event::Preempted { id } => (*id, false),
        Event::Finished(f) => (f.id, true),
    };
    let Some(listener) = listeners.get(&id) else {
        return;
    };
    if listener.send(event).is_err() {
        // The client went away: stop spending engine time on it.
        listeners.remove(&id);
        engine.abort(id);
    } else if finished {
        listeners.remove(&id);
    }
}
