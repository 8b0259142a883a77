//! What the scalers learned that a reload keeps ([`Memory`]), by pool name: each pool's
//! measured cold start, and the bursts an SLO-targeted `infergate` policy learned (a day of
//! history). A reload starts every scaler anew on the new config; without this, a pool on
//! Kubernetes whose replicas take minutes to load would be sized on the configured guess again
//! until its next scale-up was measured, and hold no burst headroom until a new history grew.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::policy::SharedBursts;

/// What the pools' scalers learned, shared by the configs a gateway reloads through.
#[derive(Default)]
pub struct Memory {
    cold_starts: Mutex<HashMap<String, Duration>>,
    bursts: Mutex<HashMap<String, SharedBursts>>,
}

impl Memory {
    /// The bursts `pool`'s policy learned under an earlier config, if any.
    pub fn bursts(&self, pool: &str) -> Option<SharedBursts> {
        lock(&self.bursts).get(pool).cloned()
    }

    /// Keeps `pool`'s policy's bursts (None: it learns none) for the configs that follow.
    pub fn keep_bursts(&self, pool: &str, bursts: Option<SharedBursts>) {
        let mut all = lock(&self.bursts);
        match bursts {
            Some(bursts) => all.insert(pool.to_string(), bursts),
            None => all.remove(pool),
        };
    }

    /// The cold start learned for `pool` under an earlier config, if any.
    pub fn cold_start(&self, pool: &str) -> Option<Duration> {
        lock(&self.cold_starts).get(pool).copied()
    }

    /// Keeps `learned` as `pool`'s cold start for the configs that follow.
    pub fn remember_cold_start(&self, pool: &str, learned: Duration) {
        lock(&self.cold_starts).insert(pool.to_string(), learned);
    }
}

fn lock<T>(map: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    map.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pools_cold_start_is_kept_by_name() {
        let memory = Memory::default();
        assert_eq!(memory.cold_start("a"), None);
        memory.remember_cold_start("a", Duration::from_secs(90));
        memory.remember_cold_start("a", Duration::from_secs(80));
        assert_eq!(memory.cold_start("a"), Some(Duration::from_secs(80)));
        assert_eq!(memory.cold_start("b"), None, "another pool learned nothing");
    }
}
