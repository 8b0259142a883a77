//! The gateway queue (its rules in [`super::admission`]): when every replica of a pool is saturated (or none is up yet while the
//! scaler starts one), requests wait here instead of piling into engine queues. Bounded by
//! count (`admission.max_queue`) and wait (`admission.max_queue_wait`); released highest
//! priority class first, and in arrival order within a class; sheddable classes are refused at
//! once. The number waiting is exact and is the scaler's best signal.
//!
//! Only the first waiter of a class looks for room: freed capacity (an answer ended, a replica
//! joined, a scrape came in) wakes that one, and each waiter let in wakes the next, so requests
//! leave strictly in order and one wake-up never sets the whole queue racing for one place.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::admission;

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A sheddable class while every replica is saturated (refused on arrival).
    Shed,
    /// `admission.max_queue` requests were waiting already.
    Full,
    /// Its deadline (`admission.max_queue_wait`) passed.
    Timeout,
}

pub struct AdmissionQueue {
    /// One queue per priority class, highest first.
    classes: Vec<ClassQueue>,
    waiting: AtomicU64,
    /// Longest wait (µs) of the requests that left the queue since the scaler last asked.
    max_wait_us: AtomicU64,
}

#[derive(Default)]
struct ClassQueue {
    /// Its length, readable without the lock.
    waiting: AtomicU64,
    /// Waiters in arrival order, each with its own wake-up.
    queue: Mutex<VecDeque<Arc<Notify>>>,
}

impl ClassQueue {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Arc<Notify>>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_first(&self, me: &Arc<Notify>) -> bool {
        self.queue().front().is_some_and(|w| Arc::ptr_eq(w, me))
    }
}

/// How often the first waiter re-checks capacity on its own (a safety net: scrapes, answers
/// ending and replicas joining all wake it).
const RECHECK: Duration = Duration::from_millis(50);

/// A request's place in its class's queue, given up when dropped (let in, refused or gone).
struct Place<'a> {
    queue: &'a AdmissionQueue,
    class: usize,
    me: Arc<Notify>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let class = &self.queue.classes[self.class];
        let was_first = {
            let mut queue = class.queue();
            let at = queue.iter().position(|w| Arc::ptr_eq(w, &self.me));
            if let Some(at) = at {
                queue.remove(at);
            }
            at == Some(0)
        };
        class.waiting.fetch_sub(1, Ordering::Relaxed);
        self.queue.waiting.fetch_sub(1, Ordering::Relaxed);
        if was_first {
            // Whether let in or gone, the next in line looks for room now.
            self.queue.wake();
        }
    }
}

impl AdmissionQueue {
    pub fn new(classes: usize) -> Self {
        Self {
            classes: (0..classes.max(1)).map(|_| ClassQueue::default()).collect(),
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

    /// Capacity may have freed (an answer ended, a replica joined, a scrape came in): the first
    /// waiter of the highest class with any looks for room. Costs one atomic load when nobody
    /// waits.
    pub fn wake(&self) {
        if self.waiting() == 0 {
            return;
        }
        if let Some(class) = admission::class_to_release(
            self.classes
                .iter()
                .map(|c| c.waiting.load(Ordering::Relaxed)),
        ) && let Some(first) = self.classes[class].queue().front()
        {
            // A stored permit: a waiter between its check and its sleep still sees it.
            first.notify_one();
        }
    }

    fn higher_class_waiting(&self, class: usize) -> bool {
        admission::class_to_release(
            self.classes
                .iter()
                .map(|c| c.waiting.load(Ordering::Relaxed)),
        )
        .is_some_and(|first| first < class)
    }

    /// Waits until this request is first in line, no higher class waits and `can_take()`
    /// holds ([`admission::may_release`] on the pool's gate), or is refused when the queue is
    /// full or its deadline `due()` passes (read again when it comes: replicas starting move it).
    pub async fn wait(
        &self,
        class: usize,
        max_queue: u64,
        due: impl Fn() -> Instant,
        can_take: impl Fn() -> bool,
    ) -> Result<(), Refused> {
        let class = class.min(self.classes.len() - 1);
        if !admission::has_room(self.waiting.fetch_add(1, Ordering::Relaxed), max_queue) {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        let queue = &self.classes[class];
        queue.waiting.fetch_add(1, Ordering::Relaxed);
        let place = Place {
            queue: self,
            class,
            me: Arc::new(Notify::new()),
        };
        let me = &place.me;
        queue.queue().push_back(me.clone());
        let mut deadline = due();
        loop {
            let first = queue.is_first(me);
            if first && !self.higher_class_waiting(class) && can_take() {
                return Ok(()); // dropping the place wakes the next in line
            }
            let until = if first {
                (Instant::now() + RECHECK).min(deadline)
            } else {
                deadline
            };
            tokio::select! {
                _ = me.notified() => {}
                _ = tokio::time::sleep_until(until.into()) => {
                    if Instant::now() >= deadline {
                        deadline = due();
                        if Instant::now() >= deadline {
                            return Err(Refused::Timeout);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[tokio::test]
    async fn full_queue_and_expired_wait_are_refused() {
        let a = AdmissionQueue::new(3);
        let never = || false;
        let deadline = Instant::now() + Duration::from_millis(100);
        assert!(matches!(
            a.wait(1, 0, || deadline, never).await,
            Err(Refused::Full)
        ));
        assert!(matches!(
            a.wait(1, 10, || deadline, never).await,
            Err(Refused::Timeout)
        ));
        assert_eq!(a.waiting(), 0, "waiters leave the count when they go");
    }

    #[tokio::test]
    async fn waiters_leave_in_arrival_order_whoever_rechecks_first() {
        use std::sync::atomic::AtomicI64;
        let a = Arc::new(AdmissionQueue::new(1));
        let free = Arc::new(AtomicI64::new(0));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..4u64 {
            let (a, free, order) = (a.clone(), free.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                let deadline = Instant::now() + Duration::from_secs(5);
                let room = || free.load(Ordering::Relaxed) > 0;
                a.wait(0, 10, || deadline, room).await.unwrap();
                free.fetch_sub(1, Ordering::Relaxed);
                order.lock().unwrap().push(i);
            }));
        }
        // Room for one appears with no wake-up (as a scrape shows it), just before the last
        // arrival's own periodic re-check would come round: the first in line still gets it.
        tokio::time::sleep(Duration::from_millis(75)).await;
        free.store(1, Ordering::Relaxed);
        let until = Instant::now() + Duration::from_secs(2);
        while order.lock().unwrap().is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Room for the other three and one wake-up: each one let in wakes the next.
        free.store(3, Ordering::Relaxed);
        a.wake();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test]
    async fn higher_classes_are_released_first() {
        let a = Arc::new(AdmissionQueue::new(3));
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
                a.wait(class, 10, || deadline, gate).await.unwrap();
                order.lock().unwrap().push(class);
                // Hold the capacity a moment, as a request would.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(a.waiting(), 2);
        open.store(true, Ordering::Relaxed);
        a.wake();
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
