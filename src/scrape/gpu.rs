//! GPU use per replica from DCGM samples (`DCGM_FI_DEV_GPU_UTIL` in percent or
//! `DCGM_FI_PROF_GR_ENGINE_ACTIVE` as a ratio), read either from a DCGM exporter's page — where
//! each series names the pod using the GPU — or from a replica's own page, where every series is
//! that replica's. A pod with several GPUs (tensor parallelism) gets their mean. Pure: the
//! scraper fetches the pages and stores the results on the replicas.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::exposition::Sample;
use crate::config::GpuMetric;
use crate::replica::Replica;

/// Mean use (0–1) over every series of `metric` on a replica's own page; None when absent.
pub fn replica_page_use(metric: GpuMetric, samples: &[Sample]) -> Option<f64> {
    let (sum, n) = samples
        .iter()
        .filter(|s| s.name == metric.name() && s.value.is_finite())
        .fold((0.0, 0u32), |(sum, n), s| {
            (sum + metric.fraction(s.value), n + 1)
        });
    (n > 0).then(|| sum / f64::from(n))
}

/// The pod a DCGM series belongs to, as dcgm-exporter and Prometheus name it: `exported_pod`
/// first (after a Prometheus hop `pod` is the exporter's own pod), then `pod` (the exporter's
/// Kubernetes mode), then `Hostname` (no Kubernetes: the host is the workload).
fn workload<'s>(sample: &'s Sample) -> Option<&'s str> {
    ["exported_pod", "pod", "Hostname"]
        .iter()
        .find_map(|key| sample.label(key).filter(|v| !v.is_empty()))
}

/// Mean use (0–1) of each pod's GPUs on an exporter's page.
pub fn use_by_pod<'s>(metric: GpuMetric, samples: &'s [Sample]) -> HashMap<&'s str, f64> {
    let mut sums: HashMap<&str, (f64, u32)> = HashMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == metric.name() && s.value.is_finite())
    {
        if let Some(pod) = workload(s) {
            let entry = sums.entry(pod).or_default();
            entry.0 += metric.fraction(s.value);
            entry.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(pod, (sum, n))| (pod, sum / f64::from(n)))
        .collect()
}

/// Stores each replica's reading, matched by its pod name; returns how many replicas got one.
/// A replica without a pod name, or whose pod is not on the page, keeps its previous reading,
/// which goes stale on its own.
pub fn record_by_pod(replicas: &[Arc<Replica>], by_pod: &HashMap<&str, f64>, at: Instant) -> usize {
    let mut matched = 0;
    for replica in replicas {
        if let Some(value) = replica
            .placement
            .pod
            .as_deref()
            .and_then(|pod| by_pod.get(pod))
        {
            replica.record_gpu(*value, at);
            matched += 1;
        }
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::exposition::samples;

    // Written from dcgm-exporter's documented output: one series per GPU, entity labels (`gpu`,
    // `UUID`, `device`, `modelName`, `Hostname`) plus the workload labels of its Kubernetes mode.
    const EXPORTER: &str = r#"# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",container="vllm",namespace="llm",pod="llama-0"} 40
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-a1",device="nvidia1",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",container="vllm",namespace="llm",pod="llama-0"} 80
DCGM_FI_DEV_GPU_UTIL{gpu="2",UUID="GPU-a2",device="nvidia2",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",container="vllm",namespace="llm",pod="llama-1"} 5
DCGM_FI_DEV_GPU_UTIL{gpu="3",UUID="GPU-a3",device="nvidia3",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",container="",namespace="",pod=""} 0
# TYPE DCGM_FI_DEV_GPU_UTIL_AVG gauge
DCGM_FI_DEV_GPU_UTIL_AVG{gpu="2",pod="llama-1"} 99
DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",Hostname="node-1",pod="llama-0"} 0.35
DCGM_FI_DEV_FB_USED{gpu="0",Hostname="node-1",pod="llama-0"} 72000
"#;

    #[test]
    fn exporter_page_gives_the_mean_of_each_pods_gpus() {
        let s = samples(EXPORTER).unwrap();
        let by_pod = use_by_pod(GpuMetric::DcgmFiDevGpuUtil, &s);
        // llama-0 has GPUs at 40 % and 80 %; the GPU without a pod is the node's own (idle,
        // unassigned: `Hostname` names it), and a metric whose name only starts alike is not read.
        assert_eq!(by_pod.len(), 3, "{by_pod:?}");
        assert!((by_pod["llama-0"] - 0.6).abs() < 1e-12);
        assert_eq!(by_pod["llama-1"], 0.05);
        assert_eq!(by_pod["node-1"], 0.0);
        let ratio = use_by_pod(GpuMetric::DcgmFiProfGrEngineActive, &s);
        assert_eq!(
            ratio.into_iter().collect::<Vec<_>>(),
            vec![("llama-0", 0.35)]
        );
    }

    #[test]
    fn exported_pod_wins_after_a_prometheus_hop() {
        let page = r#"DCGM_FI_DEV_GPU_UTIL{gpu="0",pod="dcgm-exporter-x7k2p",exported_pod="llama-0",exported_namespace="llm"} 70
DCGM_FI_DEV_GPU_UTIL{gpu="0",pod="dcgm-exporter-x7k2p",Hostname="node-2"} 250
"#;
        let s = samples(page).unwrap();
        let by_pod = use_by_pod(GpuMetric::DcgmFiDevGpuUtil, &s);
        assert_eq!(by_pod["llama-0"], 0.7);
        assert_eq!(
            by_pod["dcgm-exporter-x7k2p"], 1.0,
            "readings are clamped to the GPU (0–1)"
        );
    }

    #[test]
    fn a_replica_page_is_all_the_replicas_gpus() {
        let page = "vllm:num_requests_running 1\nDCGM_FI_DEV_GPU_UTIL{gpu=\"0\",pod=\"sim\"} 30\nDCGM_FI_DEV_GPU_UTIL{gpu=\"1\",pod=\"sim\"} 50\n";
        let s = samples(page).unwrap();
        assert_eq!(replica_page_use(GpuMetric::DcgmFiDevGpuUtil, &s), Some(0.4));
        assert_eq!(
            replica_page_use(GpuMetric::DcgmFiProfGrEngineActive, &s),
            None,
            "absent, not zero"
        );
    }

    #[test]
    fn readings_are_stored_on_the_replicas_whose_pod_matches() {
        let epoch = Instant::now();
        let replica = |port: u16, pod: Option<&str>| {
            let gauge = prometheus::IntGauge::new(format!("g{port}"), "test").unwrap();
            Arc::new(Replica::placed(
                http::uri::Scheme::HTTP,
                format!("127.0.0.1:{port}").parse().unwrap(),
                crate::replica::Placement {
                    pod: pod.map(String::from),
                    node: None,
                },
                gauge,
                epoch,
            ))
        };
        let replicas = vec![
            replica(1, Some("llama-0")),
            replica(2, Some("llama-9")),
            replica(3, None),
        ];
        let s = samples(EXPORTER).unwrap();
        let by_pod = use_by_pod(GpuMetric::DcgmFiDevGpuUtil, &s);
        let now = Instant::now();
        assert_eq!(record_by_pod(&replicas, &by_pod, now), 1);
        let stale = std::time::Duration::from_secs(3);
        assert!((replicas[0].gpu_use(now, stale).unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(replicas[1].gpu_use(now, stale), None);
        assert_eq!(replicas[2].gpu_use(now, stale), None);
    }
}
