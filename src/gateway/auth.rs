//! API keys on the data plane: a request names its key as `Authorization: Bearer <key>`; the
//! config holds only each key's SHA-256, so the check is one hash of the presented key and one
//! map lookup. A key may be limited to some models and to some priority classes: a priority
//! header its key may not use is ignored (the request gets the default class). A key may have a
//! request rate ([`RateLimits`]). Without keys in the config every request is served, as without
//! this module.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};

use super::error::GatewayError;
use crate::config::{ApiKey, Auth};

/// The key a request presents, or None when the gateway has no keys; 401 for a missing or
/// unknown key.
pub fn authenticate<'a>(
    auth: &'a Auth,
    headers: &HeaderMap,
) -> Result<Option<&'a ApiKey>, GatewayError> {
    if auth.keys.is_empty() {
        return Ok(None);
    }
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .filter(|key| !key.is_empty())
        .ok_or(GatewayError::Unauthorized)?;
    auth.keys
        .get(&digest(presented))
        .map(Some)
        .ok_or(GatewayError::Unauthorized)
}

/// The request rate of each key that has one: GCRA (the "virtual scheduling" form of a token
/// bucket), one atomic per key. Kept by the gateway's state, so a reload starts the counts anew.
pub struct RateLimits {
    epoch: Instant,
    by_key: HashMap<String, Gcra>,
}

struct Gcra {
    /// Nanoseconds between two requests at the steady rate.
    interval: u64,
    /// How far ahead of now the schedule may run (the burst).
    tolerance: u64,
    /// When the next request is due at the steady rate (nanoseconds since `epoch`).
    due: AtomicU64,
}

impl RateLimits {
    pub fn new(auth: &Auth) -> Self {
        let by_key = auth
            .keys
            .values()
            .filter_map(|k| {
                let per_minute = u64::from(k.requests_per_minute?.max(1));
                let interval = 60_000_000_000 / per_minute;
                let burst = (per_minute / 10).max(1);
                let gcra = Gcra {
                    interval,
                    tolerance: interval * (burst - 1),
                    due: AtomicU64::new(0),
                };
                Some((k.name.clone(), gcra))
            })
            .collect();
        Self {
            epoch: Instant::now(),
            by_key,
        }
    }

    /// Counts a request of `key` at `now`; when it is over its rate, how long until one would
    /// be let in (`Retry-After`).
    pub fn admit(&self, key: &ApiKey, now: Instant) -> Result<(), Duration> {
        let Some(gcra) = self.by_key.get(&key.name) else {
            return Ok(());
        };
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let mut due = gcra.due.load(Ordering::Relaxed);
        loop {
            let start = due.max(now);
            if start - now > gcra.tolerance {
                return Err(Duration::from_nanos(start - now - gcra.tolerance));
            }
            match gcra.due.compare_exchange_weak(
                due,
                start + gcra.interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => due = current,
            }
        }
    }
}

/// The SHA-256 of a presented secret (an API key, the admin token): what the gateway keeps
/// and compares instead of the secret itself.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `key` may use `model` (a served name or alias as the request gives it).
pub fn may_use(key: &ApiKey, model: &str) -> bool {
    key.models
        .as_ref()
        .is_none_or(|models| models.contains(model))
}

/// The priority class a request of `key` gets: the one it asked for if the key may use it,
/// else `default`.
pub fn priority(key: &ApiKey, asked: usize, default: usize) -> usize {
    if asked == default || key.priority_classes.contains(&asked) {
        asked
    } else {
        default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_with(key: &str, models: Option<&[&str]>, classes: Vec<usize>) -> Auth {
        let api_key = ApiKey {
            name: "team".into(),
            models: models.map(|m| m.iter().map(|s| s.to_string()).collect()),
            priority_classes: classes,
            requests_per_minute: None,
            pin_versions: false,
        };
        Auth {
            keys: [(digest(key), api_key)].into(),
        }
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn keys_are_checked_by_their_hash() {
        let auth = auth_with("sk-right", None, vec![]);
        let key = authenticate(&auth, &bearer("Bearer sk-right"))
            .unwrap()
            .unwrap();
        assert_eq!(key.name, "team");
        assert!(
            authenticate(&auth, &bearer("bearer  sk-right ")).is_ok(),
            "scheme in any case"
        );
        for wrong in ["Bearer sk-wrong", "Basic sk-right", "Bearer ", "sk-right"] {
            assert!(
                matches!(
                    authenticate(&auth, &bearer(wrong)),
                    Err(GatewayError::Unauthorized)
                ),
                "{wrong}"
            );
        }
        assert!(matches!(
            authenticate(&auth, &HeaderMap::new()),
            Err(GatewayError::Unauthorized)
        ));
        // No keys configured: open, whatever is presented.
        assert!(
            authenticate(&Auth::default(), &HeaderMap::new())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_key_over_its_rate_waits_for_its_next_turn() {
        let mut auth = auth_with("k", None, vec![]);
        auth.keys.values_mut().next().unwrap().requests_per_minute = Some(60);
        let key = auth.keys.values().next().unwrap().clone();
        let limits = RateLimits::new(&auth);
        let t0 = Instant::now() + Duration::from_secs(1);
        // 60 a minute: one a second, bursts of 6.
        for i in 0..6 {
            assert!(limits.admit(&key, t0).is_ok(), "request {i} of the burst");
        }
        let wait = limits.admit(&key, t0).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_secs(1),
            "the next one is due in a second"
        );
        assert!(limits.admit(&key, t0 + Duration::from_millis(999)).is_err());
        assert!(limits.admit(&key, t0 + Duration::from_secs(1)).is_ok());
        // A key without a rate is never limited.
        let mut open = auth_with("free", None, vec![]);
        open.keys.values_mut().next().unwrap().name = "free".into();
        let free = open.keys.values().next().unwrap();
        assert!((0..1000).all(|_| limits.admit(free, t0).is_ok()));
    }

    #[test]
    fn models_and_priority_classes_are_limited_per_key() {
        let auth = auth_with("k", Some(&["llama"]), vec![0]);
        let key = auth.keys.values().next().unwrap();
        assert!(may_use(key, "llama"));
        assert!(!may_use(key, "mistral"));
        let open = auth_with("k", None, vec![]);
        assert!(may_use(open.keys.values().next().unwrap(), "anything"));
        // Classes: 0 critical, 1 standard (default), 2 sheddable.
        assert_eq!(priority(key, 0, 1), 0, "allowed");
        assert_eq!(priority(key, 2, 1), 1, "not allowed: the default");
        let plain = open.keys.values().next().unwrap();
        assert_eq!(
            priority(plain, 0, 1),
            1,
            "a key without classes gets the default"
        );
        assert_eq!(priority(plain, 1, 1), 1);
    }
}
