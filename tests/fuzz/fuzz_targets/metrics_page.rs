//! Any bytes as a replica's metrics page, in every format: the parser must answer Ok or Err,
//! never panic, and an Ok must hold finite-or-infinite numbers it read, not invent any. The GPU
//! readers over the same samples only ever give fractions of a GPU (0–1).
#![no_main]

use infergate::config::{GpuMetric, MetricsFormat};
use infergate::scrape::{exposition, gpu};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let page = String::from_utf8_lossy(data);
    for format in [
        MetricsFormat::Vllm,
        MetricsFormat::Sglang,
        MetricsFormat::Tgi,
        MetricsFormat::Triton,
    ] {
        if let Ok(stats) = exposition::parse(format, &page) {
            assert!(!stats.waiting.is_nan() || page.contains("NaN"));
        }
    }
    if let Ok(samples) = exposition::samples(&page) {
        for metric in [GpuMetric::DcgmFiDevGpuUtil, GpuMetric::DcgmFiProfGrEngineActive] {
            let in_range = |v: f64| (0.0..=1.0).contains(&v);
            assert!(gpu::use_by_pod(metric, &samples).values().all(|v| in_range(*v)));
            assert!(gpu::replica_page_use(metric, &samples).is_none_or(in_range));
        }
    }
});
