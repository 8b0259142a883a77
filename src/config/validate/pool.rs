//! Validation of one pool: its name, models, aliases and LoRA adapters, where its replicas
//! come from (discovery) and whether its scaler's provider fits it, how `https://` replicas are
//! verified, its admission, timeout and retry settings; its metrics, routing and scaler
//! sections through their own files.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use http::uri::Scheme;
use rustls::pki_types::ServerName;

use super::Checker;
use super::metrics::metrics;
use super::routing::routing;
use super::scaler::scaler;
use crate::config::raw::*;
use crate::config::types::*;

pub(super) fn pool(c: &mut Checker, p: &str, raw: &RawPool) -> Pool {
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
    let slo = raw.slo.as_ref().map(|slo| {
        let at = format!("{p}.slo");
        let window = c.positive_duration(format!("{at}.window"), &slo.window);
        if window < Duration::from_secs(60) && !window.is_zero() {
            c.fail(
                format!("{at}.window"),
                "must be at least 1m (attainment is kept per 10 s)",
            );
        }
        if !(slo.target > 0.0 && slo.target <= 1.0) {
            c.fail(
                format!("{at}.target"),
                format!("must be above 0 and at most 1 (got {})", slo.target),
            );
        }
        SloTarget {
            ttft: c.positive_duration(format!("{at}.ttft"), &slo.ttft),
            itl: c.positive_duration(format!("{at}.itl"), &slo.itl),
            target: slo.target,
            window,
        }
    });
    let https = match &discovery {
        Discovery::Static { endpoints, .. } => {
            endpoints.iter().any(|e| e.scheme() == Some(&Scheme::HTTPS))
        }
        Discovery::Kubernetes(k) => k.scheme == Scheme::HTTPS,
        Discovery::Local(_) => false,
    };
    if https && raw.upstream_protocol == UpstreamProtocol::H2c {
        c.fail(
            format!("{p}.upstream_protocol"),
            "h2c is HTTP/2 in the clear: `https://` replicas are spoken to in HTTP/1.1 (`http1`)",
        );
    }
    Pool {
        slo,
        name,
        models: raw.models.clone(),
        aliases: raw.aliases.clone(),
        upstream_tls: upstream_tls(c, p, &raw.upstream_tls, https),
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

/// The client settings for the pool's `https://` replicas: the system's roots and the `ca`
/// file, read now (so that a reload re-reads it).
fn upstream_tls(c: &mut Checker, p: &str, raw: &RawUpstreamTls, https: bool) -> UpstreamTls {
    let p = format!("{p}.upstream_tls");
    let server_name = raw.server_name.as_ref().and_then(|name| {
        ServerName::try_from(name.clone())
            .map_err(|_| {
                let message = format!("`{name}` is not a DNS name or an IP address");
                c.fail(format!("{p}.server_name"), message)
            })
            .ok()
    });
    let ca = match &raw.ca {
        Some(file) => match crate::tls::read_certs(Path::new(file)) {
            Ok(certs) => certs,
            Err(e) => {
                c.fail(format!("{p}.ca"), e);
                return UpstreamTls::unused();
            }
        },
        None => Vec::new(),
    };
    if !https {
        if raw.ca.is_some() || raw.server_name.is_some() {
            c.fail(
                p,
                "no replica of this pool is `https://` (static endpoints, or `discovery.kubernetes.scheme: https`)",
            );
        }
        return UpstreamTls::unused();
    }
    match crate::tls::client_config(&ca) {
        Ok(config) => UpstreamTls {
            config,
            server_name,
        },
        Err(e) => {
            c.fail(format!("{p}.ca"), e);
            UpstreamTls::unused()
        }
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
                .map(|(i, e)| c.url(format!("{p}.static.endpoints[{i}]"), e, &["http", "https"]))
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
                scheme: match k.scheme {
                    ReplicaScheme::Http => Scheme::HTTP,
                    ReplicaScheme::Https => Scheme::HTTPS,
                },
            })
        }
    }
}
