//! What the scalers learned that a reload keeps ([`Memory`]): each pool's measured cold start,
//! by pool name. A reload starts every scaler anew on the new config; without this, a pool on
//! Kubernetes whose replicas take minutes to load would be sized on the configured guess again
//! until its next scale-up was measured.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The learned cold starts of the pools, shared by the configs a gateway reloads through.
#[derive(Debug, Default)]
pub struct Memory {
    cold_starts: Mutex<HashMap<String, Duration>>,
}

impl Memory {
    /// The cold start learned for `pool` under an earlier config, if any.
    pub fn cold_start(&self, pool: &str) -> Option<Duration> {
        self.lock().get(pool).copied()
    }

    /// Keeps `learned` as `pool`'s cold start for the configs that follow.
    pub fn remember_cold_start(&self, pool: &str, learned: Duration) {
        self.lock().insert(pool.to_string(), learned);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Duration>> {
        self.cold_starts.lock().unwrap_or_else(|e| e.into_inner())
    }
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
