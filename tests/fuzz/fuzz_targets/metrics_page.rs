//! Any bytes as a replica's metrics page, in every format: the parser must answer Ok or Err,
//! never panic, and an Ok must hold finite-or-infinite numbers it read, not invent any.
#![no_main]

use infergate::config::MetricsFormat;
use infergate::load::exposition;
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
    let _ = exposition::samples(&page);
});
