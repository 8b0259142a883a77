//! Validation of a pool's `metrics` section: the scrape path and timings, and the GPU source.

use super::Checker;
use crate::config::raw::RawMetrics;
use crate::config::types::{GpuMetrics, Metrics};

pub(super) fn metrics(c: &mut Checker, p: &str, raw: &RawMetrics) -> Metrics {
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
