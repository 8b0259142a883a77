//! Reading replica metrics: a small, bounded parser of the Prometheus text format and the
//! mapping of each model server's metric names (vLLM, SGLang, TGI, Triton TRT-LLM) into one
//! [`EngineStats`]. Names are matched exactly (`vllm:num_requests_waiting` is not
//! `vllm:num_requests_waiting_by_reason`); other metrics are ignored; a malformed line or a
//! missing required metric fails the whole scrape, so a renamed metric is reported instead of
//! silently read as zero.

use crate::config::MetricsFormat;
use crate::replica::EngineStats;

/// Largest metrics page accepted (bytes).
pub const MAX_PAGE_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("metrics page larger than {MAX_PAGE_BYTES} bytes")]
    TooLarge,
    #[error("line {0}: not a Prometheus sample")]
    Malformed(usize),
    #[error("required metric `{0}` is missing")]
    Missing(&'static str),
}

/// One sample: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

impl Sample<'_> {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses every sample of a page.
pub fn samples(page: &str) -> Result<Vec<Sample<'_>>, ParseError> {
    if page.len() > MAX_PAGE_BYTES {
        return Err(ParseError::TooLarge);
    }
    let mut out = Vec::new();
    for (n, line) in page.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(sample(line).ok_or(ParseError::Malformed(n + 1))?);
    }
    Ok(out)
}

fn sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        loop {
            // key
            while chars
                .peek()
                .is_some_and(|(_, c)| *c == ',' || c.is_whitespace())
            {
                chars.next();
            }
            let (start, c) = *chars.peek()?;
            if c == '}' {
                rest = &body[start + 1..];
                break;
            }
            let eq = body[start..].find('=')? + start;
            let key = body[start..eq].trim();
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    other => value.push(other),
                }
            }
            labels.push((key, value));
        }
    }
    let mut fields = rest.split_whitespace();
    let value = match fields.next()? {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Sum of every series of a metric; None when it has none.
fn sum(samples: &[Sample], name: &str) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

/// Mean of every series of a metric (several engines behind one endpoint).
fn mean(samples: &[Sample], name: &str) -> Option<f64> {
    let values: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn sum_where(samples: &[Sample], name: &str, key: &str, value: &str) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.name == name && s.label(key) == Some(value))
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

fn required(v: Option<f64>, name: &'static str) -> Result<f64, ParseError> {
    v.ok_or(ParseError::Missing(name))
}

fn split_list(text: Option<&str>) -> Vec<String> {
    text.map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

/// Reads a metrics page in the given format.
pub fn parse(format: MetricsFormat, page: &str) -> Result<EngineStats, ParseError> {
    engine_stats(format, &samples(page)?)
}

/// Reads a page's samples in the given format (the page is parsed once and its samples
/// shared with the GPU reader).
pub fn engine_stats(format: MetricsFormat, s: &[Sample]) -> Result<EngineStats, ParseError> {
    match format {
        MetricsFormat::Vllm => {
            let kv = mean(s, "vllm:kv_cache_usage_perc")
                .or_else(|| mean(s, "vllm:gpu_cache_usage_perc"));
            let hits = sum(s, "vllm:prefix_cache_hits_total")
                .or_else(|| sum(s, "vllm:gpu_prefix_cache_hits_total"));
            let queries = sum(s, "vllm:prefix_cache_queries_total")
                .or_else(|| sum(s, "vllm:gpu_prefix_cache_queries_total"));
            let cache_config = s.iter().find(|x| x.name == "vllm:cache_config_info");
            // The newest `lora_requests_info` series (its value is a timestamp) is current.
            let lora = s
                .iter()
                .filter(|x| x.name == "vllm:lora_requests_info")
                .max_by(|a, b| a.value.total_cmp(&b.value));
            Ok(EngineStats {
                waiting: required(
                    sum(s, "vllm:num_requests_waiting"),
                    "vllm:num_requests_waiting",
                )?,
                running: required(
                    sum(s, "vllm:num_requests_running"),
                    "vllm:num_requests_running",
                )?,
                kv_usage: Some(required(kv, "vllm:kv_cache_usage_perc")?),
                prefix_hit_rate: match (hits, queries) {
                    (Some(h), Some(q)) if q > 0.0 => Some(h / q),
                    _ => None,
                },
                kv_blocks: cache_config.and_then(|x| x.label("num_gpu_blocks")?.parse().ok()),
                kv_block_tokens: cache_config.and_then(|x| x.label("block_size")?.parse().ok()),
                running_loras: split_list(lora.and_then(|l| l.label("running_lora_adapters"))),
                waiting_loras: split_list(lora.and_then(|l| l.label("waiting_lora_adapters"))),
                max_loras: lora.and_then(|l| l.label("max_lora")?.parse().ok()),
            })
        }
        MetricsFormat::Sglang => Ok(EngineStats {
            waiting: required(sum(s, "sglang:num_queue_reqs"), "sglang:num_queue_reqs")?,
            running: required(sum(s, "sglang:num_running_reqs"), "sglang:num_running_reqs")?,
            kv_usage: mean(s, "sglang:token_usage"),
            prefix_hit_rate: mean(s, "sglang:cache_hit_rate"),
            ..EngineStats::default()
        }),
        MetricsFormat::Tgi => Ok(EngineStats {
            waiting: required(sum(s, "tgi_queue_size"), "tgi_queue_size")?,
            running: required(sum(s, "tgi_batch_current_size"), "tgi_batch_current_size")?,
            ..EngineStats::default()
        }),
        MetricsFormat::Triton => Ok(EngineStats {
            waiting: required(
                sum_where(s, "nv_trt_llm_request_metrics", "request_type", "waiting"),
                "nv_trt_llm_request_metrics{request_type=\"waiting\"}",
            )?,
            running: required(
                sum_where(s, "nv_trt_llm_request_metrics", "request_type", "scheduled"),
                "nv_trt_llm_request_metrics{request_type=\"scheduled\"}",
            )?,
            kv_usage: sum_where(
                s,
                "nv_trt_llm_kv_cache_block_metrics",
                "kv_cache_block_type",
                "fraction",
            ),
            ..EngineStats::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written from vLLM's documented exposition (v0.11 names), with neighbours whose names
    // share a prefix, so exact matching is exercised.
    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 99.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 250.0
vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="0",num_gpu_blocks="27000"} 1.0
vllm:lora_requests_info{max_lora="4",running_lora_adapters="a,b",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters="c",waiting_lora_adapters="d"} 1.8e9
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 42
"#;

    #[test]
    fn vllm_current_names() {
        let stats = parse(MetricsFormat::Vllm, VLLM).unwrap();
        assert_eq!(stats.waiting, 5.0, "the _by_reason series is not read");
        assert_eq!(stats.running, 15.0);
        assert_eq!(stats.kv_usage, Some(0.375));
        assert_eq!(stats.prefix_hit_rate, Some(0.25));
        assert_eq!(stats.kv_blocks, Some(27000));
        assert_eq!(stats.kv_block_tokens, Some(16));
        assert_eq!(
            stats.running_loras,
            vec!["c"],
            "the newest lora_requests_info wins"
        );
        assert_eq!(stats.waiting_loras, vec!["d"]);
        assert_eq!(stats.max_loras, Some(4));
    }

    #[test]
    fn vllm_pre_0_9_2_cache_name() {
        let page = "vllm:num_requests_running{model_name=\"m\"} 1\nvllm:num_requests_waiting{model_name=\"m\"} 2\nvllm:gpu_cache_usage_perc{model_name=\"m\"} 0.9\n";
        assert_eq!(
            parse(MetricsFormat::Vllm, page).unwrap().kv_usage,
            Some(0.9)
        );
    }

    #[test]
    fn sglang_tgi_triton() {
        let sglang = "sglang:num_running_reqs{model_name=\"m\"} 7\nsglang:num_queue_reqs{model_name=\"m\"} 2\nsglang:token_usage{model_name=\"m\"} 0.61\nsglang:cache_hit_rate{model_name=\"m\"} 0.4\n";
        let s = parse(MetricsFormat::Sglang, sglang).unwrap();
        assert_eq!(
            (s.waiting, s.running, s.kv_usage, s.prefix_hit_rate),
            (2.0, 7.0, Some(0.61), Some(0.4))
        );
        let tgi = "# TYPE tgi_queue_size gauge\ntgi_queue_size 3\ntgi_batch_current_size 9\ntgi_batch_current_max_tokens 1000\n";
        let t = parse(MetricsFormat::Tgi, tgi).unwrap();
        assert_eq!((t.waiting, t.running, t.kv_usage), (3.0, 9.0, None));
        let triton = r#"nv_trt_llm_request_metrics{model="ensemble",request_type="waiting",version="1"} 4
nv_trt_llm_request_metrics{model="ensemble",request_type="scheduled",version="1"} 6
nv_trt_llm_request_metrics{model="ensemble",request_type="context",version="1"} 1
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="ensemble",version="1"} 0.3
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="ensemble",version="1"} 1000
"#;
        let x = parse(MetricsFormat::Triton, triton).unwrap();
        assert_eq!((x.waiting, x.running, x.kv_usage), (4.0, 6.0, Some(0.3)));
    }

    #[test]
    fn missing_metric_is_an_error_not_zero() {
        let renamed = "vllm:num_requests_running{model_name=\"m\"} 1\nvllm:num_requests_queued{model_name=\"m\"} 2\nvllm:kv_cache_usage_perc 0.1\n";
        assert_eq!(
            parse(MetricsFormat::Vllm, renamed),
            Err(ParseError::Missing("vllm:num_requests_waiting"))
        );
    }

    #[test]
    fn garbage_and_truncation_fail_the_scrape() {
        assert_eq!(
            parse(MetricsFormat::Vllm, "<html>502 Bad Gateway</html>"),
            Err(ParseError::Malformed(1))
        );
        let truncated =
            "vllm:num_requests_running{model_name=\"m\"} 1\nvllm:num_requests_waiting{model_na";
        assert_eq!(
            parse(MetricsFormat::Vllm, truncated),
            Err(ParseError::Malformed(2))
        );
        let huge = "x 1\n".repeat(MAX_PAGE_BYTES / 4 + 1);
        assert_eq!(parse(MetricsFormat::Vllm, &huge), Err(ParseError::TooLarge));
        assert!(samples("bad name{} 1").is_err());
        assert!(samples("m{a=\"unterminated} 1").is_err());
    }

    #[test]
    fn label_escapes_and_special_values() {
        let s = samples(r#"m{a="x\"y",b="line\nbreak",c="back\\slash"} +Inf 1700000000"#).unwrap();
        assert_eq!(s[0].label("a"), Some("x\"y"));
        assert_eq!(s[0].label("b"), Some("line\nbreak"));
        assert_eq!(s[0].label("c"), Some("back\\slash"));
        assert_eq!(s[0].value, f64::INFINITY);
    }
}
