//! API keys on the data plane: a request names its key as `Authorization: Bearer <key>`; the
//! config holds only each key's SHA-256, so the check is one hash of the presented key and one
//! map lookup. A key may be limited to some models and to some priority classes: a priority
//! header its key may not use is ignored (the request gets the default class). A key may have a
//! request rate and a token budget ([`RateLimits`]). Without keys in the config every request is served, as without
//! this module.

use std::collections::HashMap;
use std::sync::Arc;
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

/// The request rate and token budget of each key that has them: GCRA (the "virtual
/// scheduling" form of a token bucket), one atomic each. Kept by the gateway's state, so a
/// reload starts the counts anew.
pub struct RateLimits {
    by_key: HashMap<String, KeyLimits>,
}

#[derive(Default)]
struct KeyLimits {
    requests: Option<Gcra>,
    tokens: Option<Arc<TokenBudget>>,
}

#[derive(Debug)]
struct Gcra {
    epoch: Instant,
    /// Nanoseconds between two requests (or tokens) at the steady rate.
    interval: u64,
    /// How far ahead of now the schedule may run (the burst).
    tolerance: u64,
    /// When the next one is due at the steady rate (nanoseconds since `epoch`).
    due: AtomicU64,
}

impl Gcra {
    fn new(epoch: Instant, per_minute: u64, burst: u64) -> Self {
        const MINUTE: u128 = 60_000_000_000;
        let per_minute = per_minute.max(1);
        // The tolerance from the rate itself, not from the rounded interval: above 60 billion
        // a minute the interval rounds to 0 ns, and a tolerance of 0 then refused whoever read
        // the clock a moment before another thread charged.
        let tolerance = MINUTE * u128::from(burst.max(1) - 1) / u128::from(per_minute);
        Self {
            epoch,
            interval: (MINUTE / u128::from(per_minute)) as u64,
            tolerance: u64::try_from(tolerance).unwrap_or(u64::MAX),
            due: AtomicU64::new(0),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Counts `cost` at `now` if the schedule is not over its tolerance; else how long until
    /// it is back under it.
    fn admit(&self, now: Instant, cost: u64) -> Result<(), Duration> {
        let now = self.nanos(now);
        let mut due = self.due.load(Ordering::Relaxed);
        loop {
            let start = due.max(now);
            if start - now > self.tolerance {
                return Err(Duration::from_nanos(start - now - self.tolerance));
            }
            let next = start.saturating_add(self.interval.saturating_mul(cost));
            match self
                .due
                .compare_exchange_weak(due, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => due = current,
            }
        }
    }

    /// Counts `cost` at `now` whatever the schedule (what was already served).
    fn charge(&self, now: Instant, cost: u64) {
        let now = self.nanos(now);
        let add = self.interval.saturating_mul(cost);
        let _ = self
            .due
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |due| {
                Some(due.max(now).saturating_add(add))
            });
    }
}

/// A key's tokens per minute. Tokens are known only once the answer is read, so a request is
/// let in while the key's spending is within a minute's worth, and the answer's tokens are
/// charged when it ends: a key over its budget waits until its spending falls back under it.
#[derive(Debug)]
pub struct TokenBudget(Gcra);

impl TokenBudget {
    /// A budget of `per_minute` tokens, a minute's worth of which may be spent at once (a
    /// tolerance of 60 s).
    pub fn new(epoch: Instant, per_minute: u64) -> Self {
        Self(Gcra::new(epoch, per_minute, per_minute + 1))
    }

    /// Charges the tokens (prompt + completion) of an answer that ended at `now`.
    pub fn charge(&self, now: Instant, tokens: u64) {
        self.0.charge(now, tokens);
    }
}

impl RateLimits {
    pub fn new(auth: &Auth) -> Self {
        let epoch = Instant::now();
        let by_key = auth
            .keys
            .values()
            .filter(|k| k.requests_per_minute.is_some() || k.tokens_per_minute.is_some())
            .map(|k| {
                let requests = k.requests_per_minute.map(|per_minute| {
                    let per_minute = u64::from(per_minute);
                    Gcra::new(epoch, per_minute, per_minute / 10)
                });
                let tokens = k
                    .tokens_per_minute
                    .map(|per_minute| Arc::new(TokenBudget::new(epoch, per_minute)));
                (k.name.clone(), KeyLimits { requests, tokens })
            })
            .collect();
        Self { by_key }
    }

    /// Counts a request of `key` at `now`; when it is over its request rate or token budget,
    /// 429 with how many seconds until one would be let in (`Retry-After`). Gives the key's
    /// token budget, to be charged with the answer's tokens.
    pub fn admit(
        &self,
        key: &ApiKey,
        now: Instant,
    ) -> Result<Option<Arc<TokenBudget>>, GatewayError> {
        let Some(limits) = self.by_key.get(&key.name) else {
            return Ok(None);
        };
        let seconds = |wait: Duration| wait.as_secs_f64().ceil().max(1.0) as u64;
        if let Some(tokens) = &limits.tokens {
            // Over budget: refused before the request counts against its rate.
            tokens
                .0
                .admit(now, 0)
                .map_err(|wait| GatewayError::OverTokenBudget(seconds(wait)))?;
        }
        if let Some(requests) = &limits.requests {
            requests
                .admit(now, 1)
                .map_err(|wait| GatewayError::RateLimited(seconds(wait)))?;
        }
        Ok(limits.tokens.clone())
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
            tokens_per_minute: None,
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
        assert!(
            matches!(wait, GatewayError::RateLimited(1)),
            "the next one is due in a second: {wait:?}"
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
    fn a_budget_beyond_a_token_a_nanosecond_still_allows_a_minute_of_spending() {
        let mut auth = auth_with("k", None, vec![]);
        auth.keys.values_mut().next().unwrap().tokens_per_minute = Some(1_000_000_000_000);
        let key = auth.keys.values().next().unwrap().clone();
        let limits = RateLimits::new(&auth);
        let t0 = Instant::now() + Duration::from_secs(1);
        let budget = limits.admit(&key, t0).unwrap().unwrap();
        // Another thread charged an answer a moment after this one read the clock.
        budget.charge(t0 + Duration::from_micros(5), 80);
        assert!(limits.admit(&key, t0).is_ok());
    }

    #[test]
    fn a_key_over_its_token_budget_waits_until_its_spending_falls_back() {
        let mut auth = auth_with("k", None, vec![]);
        auth.keys.values_mut().next().unwrap().tokens_per_minute = Some(600);
        let key = auth.keys.values().next().unwrap().clone();
        let limits = RateLimits::new(&auth);
        let t0 = Instant::now() + Duration::from_secs(1);
        let budget = limits
            .admit(&key, t0)
            .unwrap()
            .expect("the key has a budget");
        // 600 a minute: 10 a second. Within a minute's worth, requests go on.
        budget.charge(t0, 500);
        assert!(limits.admit(&key, t0).is_ok(), "500 of 600 spent");
        // One answer takes it 300 tokens over: refused until 30 s have paid them back.
        budget.charge(t0, 400);
        let wait = limits.admit(&key, t0).unwrap_err();
        assert!(
            matches!(wait, GatewayError::OverTokenBudget(30)),
            "{wait:?}"
        );
        assert!(
            limits
                .admit(&key, t0 + Duration::from_millis(29_900))
                .is_err()
        );
        assert!(limits.admit(&key, t0 + Duration::from_secs(30)).is_ok());
        // A refused request spends nothing: the wait did not grow.
        let later = limits
            .admit(&key, t0 + Duration::from_secs(10))
            .unwrap_err();
        assert!(
            matches!(later, GatewayError::OverTokenBudget(20)),
            "{later:?}"
        );
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
