//! Raw config → typed config. Every rule is checked and every failure recorded with its YAML
//! path and location; the typed config is returned only when there is none.
//!
//! The TLS files a config names are read and parsed here too, so that a certificate that does
//! not load is reported like any other problem.
//!
//! This file holds the checker that records problems, the file's top level (listeners and the
//! listener's certificate, classification, leader election, the pools' names and models across
//! pools); one pool is validated in `pool` (with its discovery and replica TLS), its sections
//! in `metrics`, `routing` and `scaler`.

mod chatops;
mod metrics;
mod pool;
mod routing;
mod scaler;
mod tiers;
mod versions;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Uri};

use super::raw::*;
use super::types::*;
use super::units::{parse_bytes, parse_duration};
use super::yaml::{ConfigError, Locations};

/// Collects problems while converting values, so that validation never stops at the first.
struct Checker<'a> {
    locations: &'a Locations,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(self.locations.error(path, message));
    }

    fn duration(&mut self, path: String, text: &Quantity) -> Duration {
        parse_duration(&text.0).unwrap_or_else(|e| {
            self.fail(path, e);
            Duration::ZERO
        })
    }

    fn positive_duration(&mut self, path: String, text: &Quantity) -> Duration {
        let d = self.duration(path.clone(), text);
        if d.is_zero() && parse_duration(&text.0).is_ok() {
            self.fail(path, "must be greater than zero");
        }
        d
    }

    fn fraction(&mut self, path: String, value: f64) -> f64 {
        if !(0.0..=1.0).contains(&value) {
            self.fail(path, format!("must be between 0 and 1 (got {value})"));
        }
        value
    }

    fn at_least(&mut self, path: String, value: u32, min: u32) -> u32 {
        if value < min {
            self.fail(path, format!("must be at least {min} (got {value})"));
        }
        value
    }

    fn address(&mut self, path: String, text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|_| {
            self.fail(
                path,
                format!(
                    "`{text}` is not an address: write IP:port, e.g. 127.0.0.1:8080 or [::]:8080"
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn http_url(&mut self, path: String, text: &str) -> Uri {
        self.url(path, text, &["http"])
    }

    /// A URL with a host, whose scheme is one of `schemes`.
    fn url(&mut self, path: String, text: &str, schemes: &[&str]) -> Uri {
        match text.parse::<Uri>() {
            Ok(uri)
                if uri.authority().is_some()
                    && uri.scheme_str().is_some_and(|s| schemes.contains(&s)) =>
            {
                uri
            }
            _ => {
                let schemes: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
                let schemes = schemes.join(" or ");
                self.fail(
                    path,
                    format!("`{text}` is not an {schemes} URL with a host"),
                );
                Uri::from_static("http://invalid")
            }
        }
    }

    fn header(&mut self, path: String, text: &str) -> HeaderName {
        HeaderName::from_bytes(text.as_bytes()).unwrap_or_else(|_| {
            self.fail(path, format!("`{text}` is not a valid header name"));
            HeaderName::from_static("x-invalid")
        })
    }

    fn namespace(text: &str) -> Option<String> {
        (!text.is_empty()).then(|| text.to_string())
    }
}

/// Checks a raw config and builds the typed one, or returns every problem found.
pub fn validate(raw: RawConfig, locations: &Locations) -> Result<Config, Vec<ConfigError>> {
    let mut c = Checker {
        locations,
        errors: Vec::new(),
    };
    let listeners = listeners(&mut c, &raw.listeners);
    let classification = classification(&mut c, &raw.classification);
    let leader_election = LeaderElection {
        enabled: raw.leader_election.enabled,
        lease_name: raw.leader_election.lease_name.clone(),
        namespace: Checker::namespace(&raw.leader_election.namespace),
        lease_duration: c.positive_duration(
            "leader_election.lease_duration".into(),
            &raw.leader_election.lease_duration,
        ),
    };
    let cluster = cluster(&mut c, &raw.cluster);
    let auth = auth(&mut c, &raw.auth, &raw.classification, &raw.pools);
    let chatops = chatops::chatops(&mut c, &raw.chatops);
    let tracing = tracing(&mut c, &raw.tracing);
    let versions = versions::versions(&mut c, &raw.versions, &raw.pools);
    let tiers = tiers::tiers(&mut c, &raw.tiers, &raw.pools, &raw.versions);
    if raw.pools.is_empty() {
        c.fail("pools", "at least one pool is required");
    }
    let mut pool_names: HashMap<String, usize> = HashMap::new();
    let mut model_owners: HashMap<String, usize> = HashMap::new();
    let mut pools = Vec::new();
    for (i, raw_pool) in raw.pools.iter().enumerate() {
        let p = format!("pools[{i}]");
        if let Some(name) = &raw_pool.name
            && let Some(first) = pool_names.insert(name.clone(), i)
        {
            c.fail(
                format!("{p}.name"),
                format!("duplicate pool name `{name}` (also pools[{first}])"),
            );
        }
        for model in raw_pool.models.iter().chain(raw_pool.aliases.keys()) {
            match model_owners.get(model) {
                Some(&owner) if owner != i => c.fail(
                    format!("{p}.models"),
                    format!("model name `{model}` is already served by pools[{owner}]"),
                ),
                Some(_) => {}
                None => {
                    model_owners.insert(model.clone(), i);
                }
            }
        }
        pools.push(pool::pool(&mut c, &p, raw_pool));
    }
    let state_file = raw.state_file.as_ref().map(std::path::PathBuf::from);
    if raw.state_file.as_ref().is_some_and(|f| f.trim().is_empty()) {
        c.fail(
            "state_file",
            "must not be empty (leave it unset to keep no state)",
        );
    }
    if c.errors.is_empty() {
        Ok(Config {
            listeners,
            classification,
            leader_election,
            cluster,
            auth,
            chatops,
            tracing,
            versions,
            tiers,
            pools,
            state_file,
        })
    } else {
        Err(c.errors)
    }
}

fn tracing(c: &mut Checker, raw: &RawTracing) -> Option<Tracing> {
    let sample_ratio = c.fraction("tracing.sample_ratio".into(), raw.sample_ratio);
    let export_timeout = c.positive_duration("tracing.export_timeout".into(), &raw.export_timeout);
    if raw.service_name.is_empty() {
        c.fail("tracing.service_name", "must not be empty");
    }
    let endpoint = raw.otlp_endpoint.as_ref()?;
    let base = c.url("tracing.otlp_endpoint".into(), endpoint, &["http", "https"]);
    let traces = if base.path().ends_with("/v1/traces") {
        base
    } else {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        url.parse().unwrap_or(base)
    };
    Some(Tracing {
        endpoint: traces,
        sample_ratio,
        service_name: raw.service_name.clone(),
        export_timeout,
    })
}

fn auth(c: &mut Checker, raw: &RawAuth, classes: &RawClassification, pools: &[RawPool]) -> Auth {
    let mut keys = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let served: Vec<&String> = pools
        .iter()
        .flat_map(|p| p.models.iter().chain(p.aliases.keys()))
        .collect();
    for (i, key) in raw.keys.iter().enumerate() {
        let p = format!("auth.keys[{i}]");
        if key.name.is_empty() {
            c.fail(
                format!("{p}.name"),
                "a name is required (it appears in logs)",
            );
        } else if let Some(first) = names.insert(&key.name, i) {
            c.fail(
                format!("{p}.name"),
                format!(
                    "duplicate key name `{}` (also auth.keys[{first}])",
                    key.name
                ),
            );
        }
        let Some(digest) = sha256_hex(&key.sha256) else {
            c.fail(
                format!("{p}.sha256"),
                "must be the key's SHA-256 as 64 hex digits (`printf %s \"$KEY\" | sha256sum`)",
            );
            continue;
        };
        for (j, model) in key.models.iter().enumerate() {
            if !served.contains(&model) {
                c.fail(
                    format!("{p}.models[{j}]"),
                    format!("no pool serves the model `{model}`"),
                );
            }
        }
        let mut priority_classes = Vec::new();
        for (j, class) in key.priority_classes.iter().enumerate() {
            match classes.priority_classes.iter().position(|k| k == class) {
                Some(index) => priority_classes.push(index),
                None => c.fail(
                    format!("{p}.priority_classes[{j}]"),
                    format!("`{class}` is not one of classification.priority_classes"),
                ),
            }
        }
        if key.requests_per_minute == Some(0) {
            c.fail(
                format!("{p}.requests_per_minute"),
                "must be at least 1 (leave it unset for no limit)",
            );
        }
        if key.tokens_per_minute == Some(0) {
            c.fail(
                format!("{p}.tokens_per_minute"),
                "must be at least 1 (leave it unset for no limit)",
            );
        }
        let api_key = ApiKey {
            name: key.name.clone(),
            models: (!key.models.is_empty()).then(|| key.models.iter().cloned().collect()),
            priority_classes,
            requests_per_minute: key.requests_per_minute,
            tokens_per_minute: key.tokens_per_minute,
            pin_versions: key.pin_versions,
        };
        if keys.insert(digest, api_key).is_some() {
            c.fail(format!("{p}.sha256"), "the same key is listed twice");
        }
    }
    Auth { keys }
}

/// 64 hex digits as 32 bytes.
fn sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn cluster(c: &mut Checker, raw: &RawCluster) -> Cluster {
    for (i, peer) in raw.peers.iter().enumerate() {
        let ok = peer.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            c.fail(
                format!("cluster.peers[{i}]"),
                format!("`{peer}` is not host:port (the peer's admin address)"),
            );
        }
    }
    let kubernetes = raw.kubernetes.as_ref().map(|k| {
        if k.service.is_empty() {
            c.fail(
                "cluster.kubernetes.service",
                "the gateways' Service name is required",
            );
        }
        if !raw.peers.is_empty() {
            c.fail(
                "cluster.kubernetes",
                "give either cluster.peers or cluster.kubernetes, not both",
            );
        }
        ClusterService {
            service: k.service.clone(),
            port: k.port.clone(),
            namespace: Checker::namespace(&k.namespace),
        }
    });
    Cluster {
        peers: raw.peers.clone(),
        kubernetes,
        peer_interval: c.positive_duration("cluster.peer_interval".into(), &raw.peer_interval),
        peer_stale_after: c
            .positive_duration("cluster.peer_stale_after".into(), &raw.peer_stale_after),
        sync_interval: Some(c.duration("cluster.sync_interval".into(), &raw.sync_interval))
            .filter(|d| !d.is_zero()),
    }
}

fn listeners(c: &mut Checker, raw: &RawListeners) -> Listeners {
    let gateway = c.address("listeners.gateway".into(), &raw.gateway);
    let admin = c.address("listeners.admin".into(), &raw.admin);
    if gateway == admin && gateway.port() != 0 {
        c.fail(
            "listeners.admin",
            format!("must differ from listeners.gateway ({gateway})"),
        );
    }
    let keda = raw
        .keda
        .as_ref()
        .map(|keda| c.address("listeners.keda".into(), keda));
    if let Some(keda) = keda
        && keda.port() != 0
        && (keda == gateway || keda == admin)
    {
        c.fail(
            "listeners.keda",
            format!("must differ from listeners.gateway and listeners.admin ({keda})"),
        );
    }
    let max_body_size = parse_bytes(&raw.max_body_size.0).unwrap_or_else(|e| {
        c.fail("listeners.max_body_size", e);
        0
    });
    Listeners {
        gateway,
        admin,
        max_body_size,
        drain_timeout: c.duration("listeners.drain_timeout".into(), &raw.drain_timeout),
        worker_threads: match raw.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        },
        header_timeout: c.positive_duration("listeners.header_timeout".into(), &raw.header_timeout),
        body_idle_timeout: c
            .positive_duration("listeners.body_idle_timeout".into(), &raw.body_idle_timeout),
        body_timeout: c.positive_duration("listeners.body_timeout".into(), &raw.body_timeout),
        max_connections: raw.max_connections as usize,
        tls: raw.tls.as_ref().and_then(|tls| listener_tls(c, tls)),
        access_log: raw.access_log,
        keda,
    }
}

/// Loads the listener's certificate and key now, so that a file that does not load is a
/// config problem (and a reload with it keeps the previous config serving).
fn listener_tls(c: &mut Checker, raw: &RawListenerTls) -> Option<Arc<rustls::ServerConfig>> {
    let p = "listeners.tls";
    let chain = crate::tls::read_certs(Path::new(&raw.cert))
        .map_err(|e| c.fail(format!("{p}.cert"), e))
        .ok();
    let key = crate::tls::read_key(Path::new(&raw.key))
        .map_err(|e| c.fail(format!("{p}.key"), e))
        .ok();
    crate::tls::server_config(chain?, key?)
        .map_err(|e| c.fail(p, e))
        .ok()
}

fn classification(c: &mut Checker, raw: &RawClassification) -> Classification {
    let p = "classification";
    let session_header = c.header(format!("{p}.session_header"), &raw.session_header);
    let priority_header = c.header(format!("{p}.priority_header"), &raw.priority_header);
    if raw.priority_classes.is_empty() {
        c.fail(
            format!("{p}.priority_classes"),
            "at least one class is required",
        );
    }
    for (i, class) in raw.priority_classes.iter().enumerate() {
        if raw.priority_classes[..i].contains(class) {
            c.fail(
                format!("{p}.priority_classes[{i}]"),
                format!("duplicate class `{class}`"),
            );
        }
    }
    let index_of = |class: &str| raw.priority_classes.iter().position(|k| k == class);
    let default_priority = index_of(&raw.default_priority).unwrap_or_else(|| {
        c.fail(
            format!("{p}.default_priority"),
            format!("`{}` is not one of priority_classes", raw.default_priority),
        );
        0
    });
    let mut sheddable = Vec::new();
    for (i, class) in raw.sheddable_classes.iter().enumerate() {
        match index_of(class) {
            Some(k) => sheddable.push(k),
            None => c.fail(
                format!("{p}.sheddable_classes[{i}]"),
                format!("`{class}` is not one of priority_classes"),
            ),
        }
    }
    Classification {
        session_header,
        priority_header,
        priority_classes: raw.priority_classes.clone(),
        default_priority,
        sheddable,
    }
}
