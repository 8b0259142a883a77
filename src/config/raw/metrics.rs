//! The schema of a pool's `metrics` section: how replicas' load is scraped, and where GPU use
//! is read.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Quantity;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MetricsFormat {
    /// vLLM (`vllm:*`, current and pre-0.9.2 names).
    #[default]
    Vllm,
    /// SGLang (`sglang:*`).
    Sglang,
    /// Hugging Face TGI (`tgi_*`).
    Tgi,
    /// Triton with the TensorRT-LLM backend (`nv_trt_llm_*`).
    Triton,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Exposition format of the replicas' metrics.
    pub format: MetricsFormat,
    /// HTTP path of the replicas' Prometheus metrics.
    pub path: String,
    /// Time between two scrapes of one replica (duration).
    pub scrape_interval: Quantity,
    /// Time a scrape may take before it counts as failed (duration).
    pub scrape_timeout: Quantity,
    /// Scraped stats older than this are ignored and the replica is routed on the gateway's own
    /// counts alone (duration).
    pub stale_after: Quantity,
    /// Optional GPU-use source: a DCGM exporter, or the replicas' own pages.
    pub gpu: Option<RawGpuMetrics>,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            format: MetricsFormat::Vllm,
            path: "/metrics".into(),
            scrape_interval: "100ms".into(),
            scrape_timeout: "1s".into(),
            stale_after: "1s".into(),
            gpu: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawGpuMetrics {
    /// URL of a DCGM exporter's metrics page (or of a Prometheus `/federate` page carrying its
    /// series). Samples are matched to replicas by pod name: the `exported_pod` label (after a
    /// Prometheus hop), else `pod`, else `Hostname`; several GPUs of one pod are averaged.
    /// Omit to read the metric from each replica's own metrics page instead.
    pub url: Option<String>,
    /// Metric to read.
    pub metric: GpuMetric,
    /// Time between two scrapes of the exporter at `url` (duration; default: the pool's
    /// `metrics.scrape_interval`; without `url` the metric comes with each replica scrape).
    pub scrape_interval: Option<Quantity>,
    /// GPU samples older than this are ignored (duration).
    pub stale_after: Quantity,
}

impl Default for RawGpuMetrics {
    fn default() -> Self {
        Self {
            url: None,
            metric: GpuMetric::DcgmFiDevGpuUtil,
            scrape_interval: None,
            stale_after: "3s".into(),
        }
    }
}

/// The DCGM field read as a GPU's use.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum GpuMetric {
    /// Percent of time a kernel ran (0–100).
    #[serde(rename = "DCGM_FI_DEV_GPU_UTIL")]
    DcgmFiDevGpuUtil,
    /// Ratio of time the graphics engine was active (0–1); also works on MIG slices.
    #[serde(rename = "DCGM_FI_PROF_GR_ENGINE_ACTIVE")]
    DcgmFiProfGrEngineActive,
}

impl GpuMetric {
    /// The metric's name on an exposition page.
    pub fn name(self) -> &'static str {
        match self {
            Self::DcgmFiDevGpuUtil => "DCGM_FI_DEV_GPU_UTIL",
            Self::DcgmFiProfGrEngineActive => "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        }
    }

    /// A sample's value as a fraction of the GPU (0–1).
    pub fn fraction(self, value: f64) -> f64 {
        let v = match self {
            Self::DcgmFiDevGpuUtil => value / 100.0,
            Self::DcgmFiProfGrEngineActive => value,
        };
        v.clamp(0.0, 1.0)
    }
}
