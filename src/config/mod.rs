//! Configuration: one YAML file. [`yaml`] parses text and locates every node, [`raw`] is the
//! schema users write (and the source of `docs/config.md`), [`validate`] turns it into the typed
//! [`Config`] in [`types`], reporting every problem at once with its YAML path and line.

mod docs;
mod raw;
mod types;
mod units;
mod validate;
mod yaml;

use std::fmt;
use std::path::Path;

pub use docs::reference_markdown;
pub use raw::RawConfig;
pub use types::*;
pub use units::{format_duration, parse_duration};
pub use yaml::ConfigError;

/// The configuration `serve` runs without `--config`: a local fleet of simulated replicas.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/local.yaml");

/// Every problem found in one config source.
#[derive(Debug)]
pub struct ConfigErrors {
    /// The file name, or `<embedded default>`.
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} problem{}:",
            self.source,
            if n == 1 { "" } else { "s" }
        )?;
        for error in &self.errors {
            writeln!(f, "  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses and validates config text. `source` names it in messages.
pub fn parse(text: &str, source: &str) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        source: source.to_string(),
        errors,
    };
    let (value, locations) = yaml::parse(text).map_err(|e| fail(vec![e]))?;
    let (raw, mut errors) = yaml::deserialize_all::<RawConfig>(value, &locations);
    let Some(raw) = raw else {
        return Err(fail(errors));
    };
    match validate::validate(raw, &locations) {
        Ok(config) if errors.is_empty() => return Ok(config),
        Ok(_) => {}
        Err(semantic) => {
            // A node removed for a structural problem falls back to its default; don't also
            // report what that default breaks under the same path.
            let reported: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
            let already_reported = |path: &str| {
                reported.iter().any(|r| {
                    !r.is_empty()
                        && (path == r
                            || path.starts_with(&format!("{r}."))
                            || path.starts_with(&format!("{r}[")))
                })
            };
            errors.extend(semantic.into_iter().filter(|e| !already_reported(&e.path)));
        }
    }
    errors.sort_by_key(|e| e.location);
    Err(fail(errors))
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &source),
        Err(e) => Err(ConfigErrors {
            source,
            errors: vec![ConfigError {
                path: String::new(),
                location: None,
                message: format!("cannot read the file: {e}"),
            }],
        }),
    }
}

/// A unit variant's name as the YAML spells it (a policy's `predicted-ttft`).
pub fn yaml_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The embedded default configuration, validated.
pub fn embedded_default() -> Config {
    parse(EMBEDDED_DEFAULT, "<embedded default>").expect("the embedded default config is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(name: &str) -> RoutingPolicy {
        let yaml = format!(
            "pools:\n  - name: p\n    models: [m]\n    discovery: {{static: {{endpoints: [\"http://127.0.0.1:1\"]}}}}\n    routing: {{policy: {name}}}\n"
        );
        parse(&yaml, "test").unwrap_or_else(|e| panic!("{e}")).pools[0]
            .routing
            .policy
    }

    #[test]
    fn baseline_policy_names_of_other_routers_are_accepted() {
        assert_eq!(policy_of("least-request"), RoutingPolicy::LeastInflight);
        assert_eq!(policy_of("cache-aware"), RoutingPolicy::PrefixAffinity);
        assert_eq!(policy_of("session"), RoutingPolicy::SessionAffinity);
        assert_eq!(policy_of("power-of-two"), RoutingPolicy::PowerOfTwo);
    }

    #[test]
    fn bad_api_keys_and_peers_are_each_reported() {
        let hex = "ab".repeat(32);
        let yaml = format!(
            "auth:
  keys:
    - {{name: a, sha256: {hex}, models: [nope], priority_classes: [urgent]}}
    - {{name: a, sha256: 12ab}}
    - {{sha256: {hex}}}
cluster: {{peers: [\"no-port\"], kubernetes: {{service: ''}}}}
pools:
  - name: p
    models: [m]
    discovery: {{static: {{endpoints: [\"http://127.0.0.1:1\"]}}}}
"
        );
        let errors = parse(&yaml, "test").unwrap_err().to_string();
        for expected in [
            "auth.keys[0].models[0]: no pool serves the model `nope`",
            "auth.keys[0].priority_classes[0]: `urgent` is not one of",
            "auth.keys[1].name: duplicate key name `a`",
            "auth.keys[1].sha256: must be the key's SHA-256",
            "auth.keys[2].name: a name is required",
            "auth.keys[2].sha256: the same key is listed twice",
            "cluster.peers[0]: `no-port` is not host:port",
            "cluster.kubernetes.service: the gateways' Service name is required",
            "cluster.kubernetes: give either cluster.peers or cluster.kubernetes",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }
    }

    #[test]
    fn the_embedded_default_is_valid() {
        let config = embedded_default();
        assert_eq!(config.pools[0].name, "local-sim");
        assert!(config.pools[0].scaler.enabled);
    }
}
