//! The gateway queue: when every replica of a pool is saturated (or none is up yet while the
//! scaler starts one), requests wait here instead of piling into engine queues. Bounded by
//! count (`admission.max_queue`) and wait (`admission.max_queue_wait`); released highest
//! priority class first, and in arrival order within a class; sheddable classes are refused at
//! once. The number waiting is exact and is the scaler's best signal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::error::GatewayError;

pub struct Admission {
    /// One queue per priority class, highest first.
    classes: Vec<ClassQueue>,
    waiting: AtomicU64,
    /// Longest wait (µs) of the requests that left the queue since the scaler last asked.
    max_wait_us: AtomicU64,
}

struct ClassQueue {
    waiting: AtomicU64,
    wake: Notify,
}

/// How often a waiter re-checks capacity on its own (scraped stats change without a wake-up).
const RECHECK: Duration = Duration::from_millis(50);

/// Counts a request as waiting while it lives.
struct Waiting<'a> {
    admission: &'a Admission,
    class: usize,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.admission.classes[self.class]
            .waiting
            .fetch_sub(1, Ordering::Relaxed);
        self.admission.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub fn new(classes: usize) -> Self {
        Self {
            classes: (0..classes.max(1))
                .map(|_| ClassQueue {
                    waiting: AtomicU64::new(0),
                    wake: Notify::new(),
                })
                .collect(),
            waiting: AtomicU64::new(0),
            max_wait_us: AtomicU64::new(0),
        }
    }

    /// Notes how long a request waited (whether it was then let in or refused).
    pub fn record_wait(&self, waited: Duration) {
        self.max_wait_us
            .fetch_max(waited.as_micros() as u64, Ordering::Relaxed);
    }

    /// The longest wait recorded since the previous call (the scaler's queue-wait signal).
    pub fn take_max_wait(&self) -> Option<Duration> {
        match self.max_wait_us.swap(0, Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Capacity freed for one request: wake the first waiter of the highest class with one.
    pub fn wake_one(&self) {
        if let Some(class) = self
            .classes
            .iter()
            .find(|c| c.waiting.load(Ordering::Relaxed) > 0)
        {
            class.wake.notify_one();
        }
    }

    /// Capacity changed for many (a replica joined): wake every waiter to re-check.
    pub fn wake_all(&self) {
        for class in &self.classes {
            class.wake.notify_waiters();
        }
    }

    fn higher_class_waiting(&self, class: usize) -> bool {
        self.classes[..class]
            .iter()
            .any(|c| c.waiting.load(Ordering::Relaxed) > 0)
    }

    /// Waits until `can_take()` holds and no higher class is waiting, or fails with 429 when the
    /// queue is full or `deadline` passes.
    pub async fn wait(
        &self,
        class: usize,
        max_queue: u64,
        deadline: Instant,
        can_take: impl Fn() -> bool,
    ) -> Result<(), GatewayError> {
        let class = class.min(self.classes.len() - 1);
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= max_queue {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(GatewayError::QueueFull);
        }
        self.classes[class].waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting {
            admission: self,
            class,
        };
        loop {
            let woken = self.classes[class].wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if !self.higher_class_waiting(class) && can_take() {
                return Ok(());
            }
            let recheck = (Instant::now() + RECHECK).min(deadline);
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(recheck.into()) => {
                    if Instant::now() >= deadline {
                        return Err(GatewayError::QueueTimeout);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[tokio::test]
    async fn full_queue_and_expired_wait_are_refused() {
        let a = Admission::new(3);
        let never = || false;
        let deadline = Instant::now() + Duration::from_millis(100);
        assert!(matches!(
            a.wait(1, 0, deadline, never).await,
            Err(GatewayError::QueueFull)
        ));
        assert!(matches!(
            a.wait(1, 10, deadline, never).await,
            Err(GatewayError::QueueTimeout)
        ));
        assert_eq!(a.waiting(), 0, "waiters leave the count when they go");
    }

    #[tokio::test]
    async fn higher_classes_are_released_first() {
        let a = Arc::new(Admission::new(3));
        let open = Arc::new(AtomicBool::new(false));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // A standard request queues first, then a critical one.
        for (class, delay) in [(1usize, 0u64), (0, 20)] {
            let (a, open, order) = (a.clone(), open.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let deadline = Instant::now() + Duration::from_secs(5);
                let gate = || open.load(Ordering::Relaxed);
                a.wait(class, 10, deadline, gate).await.unwrap();
                order.lock().unwrap().push(class);
                // Hold the capacity a moment, as a request would.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(a.waiting(), 2);
        open.store(true, Ordering::Relaxed);
        a.wake_one();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            order.lock().unwrap()[0],
            0,
            "the critical request went first"
        );
    }
}
