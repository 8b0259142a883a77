//! API keys on the data plane: a request names its key as `Authorization: Bearer <key>`; the
//! config holds only each key's SHA-256, so the check is one hash of the presented key and one
//! map lookup. A key may be limited to some models and to some priority classes: a priority
//! header its key may not use is ignored (the request gets the default class). Without keys in
//! the config every request is served, as without this module.

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
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    auth.keys
        .get(&digest)
        .map(Some)
        .ok_or(GatewayError::Unauthorized)
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
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let api_key = ApiKey {
            name: "team".into(),
            models: models.map(|m| m.iter().map(|s| s.to_string()).collect()),
            priority_classes: classes,
        };
        Auth {
            keys: [(digest, api_key)].into(),
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
