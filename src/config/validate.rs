//! Raw config → typed config. Every rule is checked and every failure recorded with its YAML
//! path and location; the typed config is returned only when there is none.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
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
        match text.parse::<Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => uri,
            _ => {
                self.fail(path, format!("`{text}` is not an http:// URL with a host"));
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
        pools.push(pool(&mut c, &p, raw_pool));
    }
    if c.errors.is_empty() {
        Ok(Config {
            listeners,
            classification,
            leader_election,
            cluster,
            pools,
        })
    } else {
        Err(c.errors)
    }
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
    }
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

fn pool(c: &mut Checker, p: &str, raw: &RawPool) -> Pool {
    let name = match &raw.name {
        Some(name) if !name.trim().is_empty() => name.clone(),
        Some(_) => {
            c.fail(format!("{p}.name"), "must not be empty");
            String::new()
        }
        None => {
            c.fail(format!("{p}.name"), "missing: every pool needs a name");
            String::new()
        }
    };
    if raw.models.is_empty() {
        c.fail(format!("{p}.models"), "at least one model name is required");
    }
    for (i, model) in raw.models.iter().enumerate() {
        if model.trim().is_empty() {
            c.fail(format!("{p}.models[{i}]"), "must not be empty");
        } else if raw.models[..i].contains(model) {
            c.fail(
                format!("{p}.models[{i}]"),
                format!("duplicate model `{model}`"),
            );
        }
    }
    for (i, adapter) in raw.routing.lora_adapters.iter().enumerate() {
        if !raw.models.contains(adapter) {
            c.fail(
                format!("{p}.routing.lora_adapters[{i}]"),
                format!("`{adapter}` is not one of this pool's models"),
            );
        }
    }
    for (alias, target) in &raw.aliases {
        if !raw.models.contains(target) {
            c.fail(
                format!("{p}.aliases.{alias}"),
                format!("target `{target}` is not one of this pool's models"),
            );
        }
        if raw.models.contains(alias) {
            c.fail(
                format!("{p}.aliases.{alias}"),
                "an alias must not also be a model name",
            );
        }
    }
    let scaler = scaler(c, p, &raw.scaler);
    let discovery = discovery(c, p, raw.discovery.as_ref(), &scaler);
    match (&scaler.provider, &discovery) {
        (Provider::Local, Discovery::Local(_)) | (Provider::Static, _) => {}
        (Provider::Kubernetes(_), Discovery::Kubernetes(_)) => {}
        (Provider::Local, _) if scaler.enabled => c.fail(
            format!("{p}.scaler.provider"),
            "the local provider needs `discovery.local` (or set `provider: static`)",
        ),
        (Provider::Kubernetes(_), _) => c.fail(
            format!("{p}.scaler.provider"),
            "the kubernetes provider needs `discovery.kubernetes`",
        ),
        _ => {}
    }
    Pool {
        name,
        models: raw.models.clone(),
        aliases: raw.aliases.clone(),
        discovery,
        upstream_protocol: raw.upstream_protocol,
        metrics: metrics(c, p, &raw.metrics),
        routing: routing(c, p, &raw.routing),
        admission: Admission {
            max_queue: raw.admission.max_queue,
            max_queue_wait: c.duration(
                format!("{p}.admission.max_queue_wait"),
                &raw.admission.max_queue_wait,
            ),
            max_waiting_per_replica: raw.admission.max_waiting_per_replica,
            max_kv_cache_usage: c.fraction(
                format!("{p}.admission.max_kv_cache_usage"),
                raw.admission.max_kv_cache_usage,
            ),
            max_inflight_per_replica: c.at_least(
                format!("{p}.admission.max_inflight_per_replica"),
                raw.admission.max_inflight_per_replica,
                1,
            ),
        },
        timeouts: Timeouts {
            connect: c.positive_duration(format!("{p}.timeouts.connect"), &raw.timeouts.connect),
            first_byte: c
                .positive_duration(format!("{p}.timeouts.first_byte"), &raw.timeouts.first_byte),
            idle_stream: c.positive_duration(
                format!("{p}.timeouts.idle_stream"),
                &raw.timeouts.idle_stream,
            ),
        },
        retries: Retries {
            max_attempts: c.at_least(
                format!("{p}.retries.max_attempts"),
                raw.retries.max_attempts,
                1,
            ),
            eject_after_failures: c.at_least(
                format!("{p}.retries.eject_after_failures"),
                raw.retries.eject_after_failures,
                1,
            ),
            ejection_time: c.duration(
                format!("{p}.retries.ejection_time"),
                &raw.retries.ejection_time,
            ),
        },
        scaler,
    }
}

fn discovery(c: &mut Checker, p: &str, raw: Option<&RawDiscovery>, scaler: &Scaler) -> Discovery {
    let p = format!("{p}.discovery");
    match raw {
        None => {
            c.fail(p, "missing: set one of `static`, `local` or `kubernetes`");
            Discovery::Static {
                endpoints: vec![],
                pods: vec![],
            }
        }
        Some(RawDiscovery::Static(s)) => {
            if s.endpoints.is_empty() {
                c.fail(
                    format!("{p}.static.endpoints"),
                    "at least one endpoint is required",
                );
            }
            let endpoints = s
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| c.http_url(format!("{p}.static.endpoints[{i}]"), e))
                .collect();
            let pods = s.endpoints.iter().map(|e| s.pods.get(e).cloned()).collect();
            for url in s.pods.keys().filter(|u| !s.endpoints.contains(u)) {
                c.fail(
                    format!("{p}.static.pods"),
                    format!("`{url}` is not one of `endpoints`"),
                );
            }
            Discovery::Static { endpoints, pods }
        }
        Some(RawDiscovery::Local(l)) => {
            if l.command.is_empty() {
                c.fail(format!("{p}.local.command"), "must name a program to run");
            }
            if scaler.enabled
                && !(scaler.min_replicas..=scaler.max_replicas).contains(&l.replicas)
                && scaler.min_replicas <= scaler.max_replicas
            {
                c.fail(
                    format!("{p}.local.replicas"),
                    format!(
                        "must be within scaler.min_replicas..=scaler.max_replicas ({}..={}), got {}",
                        scaler.min_replicas, scaler.max_replicas, l.replicas
                    ),
                );
            }
            Discovery::Local(LocalDiscovery {
                replicas: l.replicas,
                command: l.command.clone(),
                startup_timeout: c
                    .positive_duration(format!("{p}.local.startup_timeout"), &l.startup_timeout),
            })
        }
        Some(RawDiscovery::Kubernetes(k)) => {
            let source = match (&k.service, k.selector.is_empty()) {
                (Some(service), true) => KubernetesSource::Service(service.clone()),
                (None, false) => KubernetesSource::Selector(k.selector.clone()),
                (Some(_), false) => {
                    c.fail(
                        format!("{p}.kubernetes"),
                        "set either `service` or `selector`, not both",
                    );
                    KubernetesSource::Selector(BTreeMap::new())
                }
                (None, true) => {
                    c.fail(format!("{p}.kubernetes"), "set `service` or `selector`");
                    KubernetesSource::Selector(BTreeMap::new())
                }
            };
            Discovery::Kubernetes(KubernetesDiscovery {
                namespace: Checker::namespace(&k.namespace),
                source,
                port: k.port.clone(),
            })
        }
    }
}

fn metrics(c: &mut Checker, p: &str, raw: &RawMetrics) -> Metrics {
    let p = format!("{p}.metrics");
    if !raw.path.starts_with('/') {
        c.fail(
            format!("{p}.path"),
            format!("`{}` must start with /", raw.path),
        );
    }
    let scrape_interval = c.positive_duration(format!("{p}.scrape_interval"), &raw.scrape_interval);
    let gpu = raw.gpu.as_ref().map(|g| GpuMetrics {
        url: g
            .url
            .as_ref()
            .map(|u| c.http_url(format!("{p}.gpu.url"), u)),
        metric: g.metric,
        scrape_interval: g.scrape_interval.as_ref().map_or(scrape_interval, |i| {
            c.positive_duration(format!("{p}.gpu.scrape_interval"), i)
        }),
        stale_after: c.positive_duration(format!("{p}.gpu.stale_after"), &g.stale_after),
    });
    Metrics {
        format: raw.format,
        path: raw.path.clone(),
        scrape_interval,
        scrape_timeout: c.positive_duration(format!("{p}.scrape_timeout"), &raw.scrape_timeout),
        stale_after: c.positive_duration(format!("{p}.stale_after"), &raw.stale_after),
        gpu,
    }
}

fn routing(c: &mut Checker, p: &str, raw: &RawRouting) -> Routing {
    let p = format!("{p}.routing");
    if raw.imbalance_ratio < 1.0 {
        c.fail(
            format!("{p}.imbalance_ratio"),
            format!("must be at least 1 (got {})", raw.imbalance_ratio),
        );
    }
    Routing {
        policy: raw.policy,
        prefix_min_match: c.fraction(format!("{p}.prefix_min_match"), raw.prefix_min_match),
        prefix_block_chars: c.at_least(
            format!("{p}.prefix_block_chars"),
            raw.prefix_block_chars,
            1,
        ),
        prefix_cache_entries: c.at_least(
            format!("{p}.prefix_cache_entries"),
            raw.prefix_cache_entries,
            1,
        ),
        imbalance_requests: raw.imbalance_requests,
        imbalance_ratio: raw.imbalance_ratio,
        prefill_tokens_per_second: {
            if raw.prefill_tokens_per_second.is_nan() || raw.prefill_tokens_per_second <= 0.0 {
                c.fail(
                    format!("{p}.prefill_tokens_per_second"),
                    format!(
                        "must be greater than 0 (got {})",
                        raw.prefill_tokens_per_second
                    ),
                );
            }
            raw.prefill_tokens_per_second
        },
        weights: {
            let w = &raw.weights;
            for (name, value) in [
                ("queue", w.queue),
                ("kv_cache", w.kv_cache),
                ("prefix", w.prefix),
                ("gpu", w.gpu),
            ] {
                if value.is_nan() || value < 0.0 {
                    c.fail(
                        format!("{p}.weights.{name}"),
                        format!("must be 0 or more (got {value})"),
                    );
                }
            }
            Weights {
                queue: w.queue,
                kv_cache: w.kv_cache,
                prefix: w.prefix,
                gpu: w.gpu,
            }
        },
        tie_margin: c.fraction(format!("{p}.tie_margin"), raw.tie_margin),
        lora_adapters: raw.lora_adapters.clone(),
        lora_load_time: c.duration(format!("{p}.lora_load_time"), &raw.lora_load_time),
    }
}

fn scaler(c: &mut Checker, p: &str, raw: &RawScaler) -> Scaler {
    let p = format!("{p}.scaler");
    if raw.max_replicas < raw.min_replicas {
        c.fail(
            format!("{p}.max_replicas"),
            format!("must be >= min_replicas ({})", raw.min_replicas),
        );
    }
    if raw.max_replicas == 0 {
        c.fail(format!("{p}.max_replicas"), "must be at least 1");
    }
    let t = &raw.targets;
    if t.concurrency.is_nan() || t.concurrency <= 0.0 {
        c.fail(
            format!("{p}.targets.concurrency"),
            format!("must be greater than 0 (got {})", t.concurrency),
        );
    }
    let targets = ScalerTargets {
        concurrency: t.concurrency,
        kv_cache_usage: t
            .kv_cache_usage
            .map(|v| c.fraction(format!("{p}.targets.kv_cache_usage"), v)),
        gpu_utilization: t
            .gpu_utilization
            .map(|v| c.fraction(format!("{p}.targets.gpu_utilization"), v)),
        queue_wait: t
            .queue_wait
            .as_ref()
            .map(|v| c.positive_duration(format!("{p}.targets.queue_wait"), v)),
    };
    let provider = match &raw.provider {
        RawProvider::Local => Provider::Local,
        RawProvider::Static => Provider::Static,
        RawProvider::Kubernetes(t) => {
            if t.name.is_empty() {
                c.fail(
                    format!("{p}.provider.kubernetes.name"),
                    "missing: name the workload to scale",
                );
            }
            Provider::Kubernetes(ScaleTarget {
                api_version: t.api_version.clone(),
                kind: t.kind.clone(),
                name: t.name.clone(),
                namespace: Checker::namespace(&t.namespace),
            })
        }
    };
    Scaler {
        enabled: raw.enabled,
        policy: raw.policy,
        min_replicas: raw.min_replicas,
        max_replicas: raw.max_replicas,
        interval: c.positive_duration(format!("{p}.interval"), &raw.interval),
        targets,
        scale_up_window: c.positive_duration(format!("{p}.scale_up_window"), &raw.scale_up_window),
        scale_down_window: c
            .positive_duration(format!("{p}.scale_down_window"), &raw.scale_down_window),
        scale_down_stabilization: c.duration(
            format!("{p}.scale_down_stabilization"),
            &raw.scale_down_stabilization,
        ),
        tolerance: c.fraction(format!("{p}.tolerance"), raw.tolerance),
        max_scale_down_step: c.at_least(
            format!("{p}.max_scale_down_step"),
            raw.max_scale_down_step,
            1,
        ),
        scale_to_zero_after: c
            .duration(format!("{p}.scale_to_zero_after"), &raw.scale_to_zero_after),
        cold_start: c.duration(format!("{p}.cold_start"), &raw.cold_start),
        drain_timeout: c.duration(format!("{p}.drain_timeout"), &raw.drain_timeout),
        provider,
    }
}
