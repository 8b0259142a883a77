//! The comparison's results: the report written as JSON ([`Report`]), the terminal table
//! ([`table`]) and the SVG plots ([`write_outputs`]).

use anyhow::Context;

use super::stats::{self, RunReport};
use super::{plot, workload};

/// The whole comparison.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub workload: WorkloadSummary,
    pub runs: Vec<RunReport>,
}

#[derive(Debug, serde::Serialize)]
pub struct WorkloadSummary {
    pub requests: usize,
    pub span_seconds: f64,
    pub mean_rate: f64,
    pub mean_prompt_tokens: f64,
    pub mean_output_tokens: f64,
}

pub fn summarize(requests: &[workload::Request]) -> WorkloadSummary {
    let n = requests.len().max(1) as f64;
    let span = requests.last().map_or(0.0, |r| r.arrival);
    WorkloadSummary {
        requests: requests.len(),
        span_seconds: span,
        mean_rate: requests.len() as f64 / span.max(1e-9),
        mean_prompt_tokens: requests
            .iter()
            .map(|r| f64::from(r.prompt_tokens))
            .sum::<f64>()
            / n,
        mean_output_tokens: requests
            .iter()
            .map(|r| f64::from(r.output_tokens))
            .sum::<f64>()
            / n,
    }
}

/// The comparison as a table.
pub fn table(runs: &[RunReport]) -> String {
    let header = [
        "run",
        "TTFT p50",
        "p90",
        "p99",
        "ITL p90",
        "E2E p90",
        "tok/s",
        "SLO",
        "goodput",
        "cache hit",
        "replica·s",
        "cost",
        "max",
        "scale ↑/↓",
        "failed",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in runs {
        let failed: usize = r.failed.values().sum();
        rows.push(vec![
            r.name.clone(),
            secs(r.ttft.p50),
            secs(r.ttft.p90),
            secs(r.ttft.p99),
            secs(r.itl.p90),
            secs(r.e2e.p90),
            format!("{:.0}", r.throughput),
            format!("{:.1} %", 100.0 * r.slo_attainment),
            format!("{:.0}", r.goodput),
            format!("{:.1} %", 100.0 * r.prefix_cache_hit_rate),
            format!("{:.0}", r.replica_seconds),
            r.cost.map_or("-".into(), |c| format!("{c:.2}")),
            r.max_replicas.to_string(),
            format!("{}/{}", r.scale_ups, r.scale_downs),
            failed.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let pad = widths[c] - cell.chars().count();
                if c == 0 {
                    format!("{cell}{}", " ".repeat(pad))
                } else {
                    format!("{}{cell}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let slo = runs.first().map(|r| r.slo);
    if let Some(slo) = slo {
        out.push_str(&format!(
            "SLO: TTFT ≤ {} and mean ITL ≤ {}; latencies in seconds; virtual {:.0} s in {:.1} s wall ({:.0}× real time) per run",
            secs(slo.ttft),
            secs(slo.itl),
            runs[0].duration,
            runs[0].wall_seconds,
            runs[0].speedup()
        ));
    }
    out
}

fn secs(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// report.json, timeline.svg (replicas, load and TTFT over time) and compare.svg (per run).
pub fn write_outputs(dir: &std::path::Path, report: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("report.json", serde_json::to_string_pretty(report)?)?;
    let lines = |f: &dyn Fn(&stats::Sample) -> Option<f64>| -> Vec<(String, Vec<(f64, f64)>)> {
        report
            .runs
            .iter()
            .map(|r| {
                let points = r
                    .timeline
                    .iter()
                    .filter_map(|s| Some((s.t, f(s)?)))
                    .collect();
                (r.name.clone(), points)
            })
            .collect()
    };
    let charts = [
        plot::LineChart {
            title: "Ready replicas",
            x_label: "virtual time (s)",
            y_label: "replicas",
            series: lines(&|s| Some(f64::from(s.ready))),
        },
        plot::LineChart {
            title: "Load at the gateway (in flight + queued)",
            x_label: "virtual time (s)",
            y_label: "requests",
            series: lines(&|s| Some((s.inflight + s.queued) as f64)),
        },
        plot::LineChart {
            title: "TTFT p90 per interval",
            x_label: "virtual time (s)",
            y_label: "seconds",
            series: lines(&|s| s.ttft_p90),
        },
        plot::LineChart {
            title: "Arrival rate",
            x_label: "virtual time (s)",
            y_label: "requests/s",
            series: lines(&|s| Some(s.arrival_rate))
                .into_iter()
                .take(1)
                .collect(),
        },
    ];
    write(
        "timeline.svg",
        stack(charts.iter().map(plot::LineChart::svg)),
    )?;
    let bars =
        |title: &'static str, unit: &'static str, f: &dyn Fn(&RunReport) -> f64| plot::BarChart {
            title,
            y_label: unit,
            bars: report.runs.iter().map(|r| (r.name.clone(), f(r))).collect(),
        };
    let compare = [
        bars("TTFT p90", "seconds", &|r| r.ttft.p90),
        bars("TTFT p99", "seconds", &|r| r.ttft.p99),
        bars("Throughput", "output tokens/s", &|r| r.throughput),
        bars("SLO attainment", "%", &|r| 100.0 * r.slo_attainment),
        bars("Cost", "replica-seconds", &|r| r.replica_seconds),
    ];
    write(
        "compare.svg",
        stack(compare.iter().map(plot::BarChart::svg)),
    )?;
    Ok(())
}

/// Several SVG charts one above the other in one file.
fn stack(charts: impl Iterator<Item = String>) -> String {
    let charts: Vec<String> = charts.collect();
    let height = 300 * charts.len();
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="760" height="{height}" viewBox="0 0 760 {height}">"#
    );
    for (i, chart) in charts.iter().enumerate() {
        out.push_str(&format!(r#"<g transform="translate(0,{})">"#, 300 * i));
        out.push_str(chart);
        out.push_str("</g>");
    }
    out.push_str("</svg>\n");
    out
}
