//! What the scalers learned that a reload keeps ([`Memory`]), by pool name: each pool's
//! measured cold start, and the bursts an SLO-targeted `infergate` policy learned (a week of
//! history, in 15-minute histograms). A reload starts every scaler anew on the new config;
//! without this, a pool on Kubernetes whose replicas take minutes to load would be sized on the
//! configured guess again until its next scale-up was measured, and hold no burst headroom
//! until a new history grew.
//! With a `state_file`, a restart keeps it too: [`Memory::load`] at start, [`spawn_saver`]
//! every minute and [`Memory::save`] at shutdown.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::headroom::Burstiness;
use super::policy::SharedBursts;

/// How often a state file is rewritten (and once more at shutdown): a crash loses at most
/// this much of what was learned.
pub const SAVE_EVERY: Duration = Duration::from_secs(60);

/// A state file: what each pool's scaler learned (a burst history's times are Unix seconds).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    /// When it was written (Unix seconds).
    saved_at: f64,
    pools: BTreeMap<String, SavedPool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cold_start_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bursts: Option<Burstiness>,
}

/// What the pools' scalers learned, shared by the configs a gateway reloads through.
#[derive(Default)]
pub struct Memory {
    cold_starts: Mutex<HashMap<String, Duration>>,
    bursts: Mutex<HashMap<String, SharedBursts>>,
}

impl Memory {
    /// Whether nothing was learned yet.
    pub fn is_empty(&self) -> bool {
        lock(&self.cold_starts).is_empty() && lock(&self.bursts).is_empty()
    }

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

    /// Writes what is learned to `path`, through a temporary file renamed over it (a crash
    /// mid-write leaves the previous file).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut saved = Saved {
            saved_at: crate::openai::unix_seconds() as f64,
            pools: BTreeMap::new(),
        };
        for (pool, learned) in lock(&self.cold_starts).iter() {
            saved
                .pools
                .entry(pool.clone())
                .or_default()
                .cold_start_seconds = Some(learned.as_secs_f64());
        }
        for (pool, bursts) in lock(&self.bursts).iter() {
            let bursts = lock(bursts).clone();
            saved.pools.entry(pool.clone()).or_default().bursts = Some(bursts);
        }
        let text = serde_json::to_vec(&saved)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let partial = partial_path(path);
        std::fs::write(&partial, text)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    }

    /// What `path` holds. No file: nothing learned yet. A file that cannot be read is moved aside to
    /// `<path>.unreadable` (so the next save does not overwrite what it held) and the error
    /// comes back beside an empty memory: the gateway starts either way.
    pub fn load(path: &Path) -> (Self, Option<anyhow::Error>) {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Self::default(), None),
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!("cannot read {}", path.display()));
                return (Self::default(), Some(e));
            }
        };
        let saved: Saved = match serde_json::from_slice(&text) {
            Ok(saved) => saved,
            Err(e) => {
                let aside = PathBuf::from(format!("{}.unreadable", path.display()));
                let moved = match std::fs::rename(path, &aside) {
                    Ok(()) => format!("moved to {}", aside.display()),
                    Err(m) => format!("could not be moved aside ({m})"),
                };
                let e = anyhow::anyhow!(
                    "{} is not an infergate state file ({e}); it was {moved}, and the scalers learn anew",
                    path.display()
                );
                return (Self::default(), Some(e));
            }
        };
        let memory = Self::default();
        for (pool, learned) in saved.pools {
            if let Some(secs) = learned
                .cold_start_seconds
                .filter(|s| s.is_finite() && *s >= 0.0)
            {
                memory.remember_cold_start(&pool, Duration::from_secs_f64(secs));
            }
            if let Some(bursts) = learned.bursts {
                memory.keep_bursts(&pool, Some(Arc::new(Mutex::new(bursts))));
            }
        }
        (memory, None)
    }
}

/// Saves `memory` to `path` every [`SAVE_EVERY`] until aborted, logging a failure once (and
/// again only when it changes).
pub fn spawn_saver(memory: Arc<Memory>, path: PathBuf) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAVE_EVERY);
        tick.tick().await; // the first tick is at once: nothing was learned yet
        let mut last_error = None;
        loop {
            tick.tick().await;
            let (memory, path) = (memory.clone(), path.clone());
            let saved = tokio::task::spawn_blocking(move || memory.save(&path)).await;
            let error = match saved {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(e) => Some(e.to_string()),
            };
            if let Some(message) = error.as_ref().filter(|m| last_error.as_ref() != Some(*m)) {
                tracing::warn!("scaler state not saved: {message}");
            }
            last_error = error;
        }
    })
}

/// A temporary file beside `path`, of this save alone: two saves at once (a reload's old and new
/// config, two gateways given one file) never write into one another's.
fn partial_path(path: &Path) -> PathBuf {
    static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PathBuf::from(format!(
        "{}.partial.{}.{n}",
        path.display(),
        std::process::id()
    ))
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

    /// An empty directory of this test's own.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("infergate-memory-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn a_burst_history() -> SharedBursts {
        let mut bursts = Burstiness::new(10.0, 10.0);
        for s in 0..600 {
            // 100 a second, then 300 from 400 s on: a 3x rise within the 60 s horizon.
            let rate = if s < 400 { 100 } else { 300 };
            bursts.observe(f64::from(s), rate, f64::from(rate as u32), 60.0);
        }
        Arc::new(Mutex::new(bursts))
    }

    #[test]
    fn a_state_file_restores_cold_starts_and_bursts() {
        let dir = scratch("restore");
        let path = dir.join("state/scalers.json");
        let memory = Memory::default();
        memory.remember_cold_start("a", Duration::from_millis(95_500));
        let bursts = a_burst_history();
        let factor = lock(&bursts).factor(600.0, 0.99);
        assert!(factor > 2.5, "{factor}");
        memory.keep_bursts("a", Some(bursts));
        memory.save(&path).unwrap();
        let beside: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(beside, ["scalers.json"], "no temporary file is left");

        let (restored, error) = Memory::load(&path);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(
            restored.cold_start("a"),
            Some(Duration::from_millis(95_500))
        );
        let bursts = restored.bursts("a").expect("the bursts were saved");
        assert_eq!(lock(&bursts).factor(600.0, 0.99), factor);
        assert!(restored.cold_start("b").is_none() && restored.bursts("b").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn saves_at_once_to_one_file_leave_a_whole_one() {
        let dir = scratch("at-once");
        let path = dir.join("scalers.json");
        let memory = Arc::new(Memory::default());
        memory.remember_cold_start("a", Duration::from_secs(42));
        memory.keep_bursts("a", Some(a_burst_history()));
        let savers: Vec<_> = (0..4)
            .map(|_| {
                let (memory, path) = (memory.clone(), path.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        memory.save(&path).unwrap();
                    }
                })
            })
            .collect();
        for saver in savers {
            saver.join().unwrap();
        }
        let (restored, error) = Memory::load(&path);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(restored.cold_start("a"), Some(Duration::from_secs(42)));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_state_file_is_nothing_learned_and_a_broken_one_is_kept_aside() {
        let dir = scratch("broken");
        let path = dir.join("scalers.json");
        let (memory, error) = Memory::load(&path);
        assert!(error.is_none() && memory.cold_start("a").is_none());

        std::fs::write(&path, b"{\"pools\": {\"a\": 3").unwrap();
        let (memory, error) = Memory::load(&path);
        let message = format!("{:#}", error.expect("a broken file is reported"));
        assert!(
            message.contains("is not an infergate state file"),
            "{message}"
        );
        assert!(memory.cold_start("a").is_none());
        let aside = dir.join("scalers.json.unreadable");
        assert_eq!(std::fs::read(&aside).unwrap(), b"{\"pools\": {\"a\": 3");
        assert!(!path.exists(), "the next save starts a new file");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
