//! Trace readers: infergate's JSONL, Mooncake's JSONL and the Azure LLM inference CSV, each
//! line turned into a [`Request`] whose prompt blocks describe the sharing the trace records.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::{BLOCK_TOKENS, Request, Segment, mix};

/// Mooncake's `hash_ids` name blocks of this many tokens.
const MOONCAKE_BLOCK_TOKENS: u32 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceFormat {
    /// infergate's own JSONL (see docs/workloads.md).
    Jsonl,
    /// Mooncake: `timestamp` (ms), `input_length`, `output_length`, `hash_ids`.
    Mooncake,
    /// Azure LLM inference CSV: `TIMESTAMP`, `ContextTokens`, `GeneratedTokens`.
    Azure,
}

/// Guesses a trace's format from its name (`.csv` → Azure) or first line (`hash_ids` →
/// Mooncake).
pub fn detect_format(path: &Path) -> anyhow::Result<TraceFormat> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        return Ok(TraceFormat::Azure);
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut first = String::new();
    std::io::BufReader::new(file).read_line(&mut first)?;
    Ok(if first.contains("\"hash_ids\"") {
        TraceFormat::Mooncake
    } else {
        TraceFormat::Jsonl
    })
}

pub(super) fn read_trace(path: &Path, format: TraceFormat) -> anyhow::Result<Vec<Request>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let lines = std::io::BufReader::new(file).lines();
    let what = |n: usize| format!("{}:{}", path.display(), n + 1);
    let mut out = Vec::new();
    match format {
        TraceFormat::Jsonl => {
            for (n, line) in lines.enumerate() {
                let line = line.with_context(|| what(n))?;
                if line.trim().is_empty() {
                    continue;
                }
                out.push(jsonl_request(&line, out.len() as u64).with_context(|| what(n))?);
            }
        }
        TraceFormat::Mooncake => {
            for (n, line) in lines.enumerate() {
                let line = line.with_context(|| what(n))?;
                if line.trim().is_empty() {
                    continue;
                }
                out.push(mooncake_request(&line, out.len() as u64).with_context(|| what(n))?);
            }
        }
        TraceFormat::Azure => {
            let mut first_time = None;
            for (n, line) in lines.enumerate() {
                let line = line.with_context(|| what(n))?;
                if n == 0 && line.starts_with("TIMESTAMP") {
                    continue;
                }
                if line.trim().is_empty() {
                    continue;
                }
                let r = azure_request(&line, &mut first_time, out.len() as u64)
                    .with_context(|| what(n))?;
                out.push(r);
            }
        }
    }
    anyhow::ensure!(!out.is_empty(), "{}: no requests", path.display());
    out.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    Ok(out)
}

/// A line of infergate's JSONL trace format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlLine {
    /// Arrival, seconds from the start.
    time: f64,
    #[serde(default)]
    model: Option<String>,
    prompt_tokens: u32,
    output_tokens: u32,
    /// Requests of the same group share their first `shared_prefix_tokens` tokens.
    #[serde(default)]
    prefix_group: Option<String>,
    #[serde(default)]
    shared_prefix_tokens: u32,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    priority: Option<String>,
}

fn jsonl_request(line: &str, index: u64) -> anyhow::Result<Request> {
    let l: JsonlLine = serde_json::from_str(line)?;
    anyhow::ensure!(l.time.is_finite() && l.time >= 0.0, "`time` must be >= 0");
    anyhow::ensure!(l.output_tokens > 0, "`output_tokens` must be > 0");
    let mut segments = Vec::new();
    if let Some(group) = &l.prefix_group {
        let shared = l.shared_prefix_tokens.min(l.prompt_tokens) / BLOCK_TOKENS;
        segments.push(Segment {
            id: mix(crate::openai::fnv1a(group.as_bytes()), 1),
            blocks: shared,
        });
    }
    segments.push(Segment {
        id: mix(index, 0x7A11),
        blocks: l.prompt_tokens / BLOCK_TOKENS,
    });
    Ok(Request {
        arrival: l.time,
        model: l.model,
        prompt_tokens: l.prompt_tokens.max(1),
        output_tokens: l.output_tokens,
        segments,
        session: l.session,
        priority: l.priority,
    })
}

#[derive(Debug, Deserialize)]
struct MooncakeLine {
    timestamp: f64,
    input_length: u32,
    output_length: u32,
    #[serde(default)]
    hash_ids: Vec<u64>,
}

fn mooncake_request(line: &str, index: u64) -> anyhow::Result<Request> {
    let l: MooncakeLine = serde_json::from_str(line)?;
    let per_id = MOONCAKE_BLOCK_TOKENS / BLOCK_TOKENS;
    let mut segments: Vec<Segment> = l
        .hash_ids
        .iter()
        .map(|id| Segment {
            id: mix(*id, 0x3001),
            blocks: per_id,
        })
        .collect();
    // Blocks past the named ones are this request's own.
    segments.push(Segment {
        id: mix(index, 0x7A11),
        blocks: l.input_length / BLOCK_TOKENS,
    });
    Ok(Request {
        arrival: l.timestamp / 1000.0,
        model: None,
        prompt_tokens: l.input_length.max(1),
        output_tokens: l.output_length.max(1),
        segments,
        session: None,
        priority: None,
    })
}

fn azure_request(line: &str, first: &mut Option<f64>, index: u64) -> anyhow::Result<Request> {
    let mut fields = line.split(',');
    let (Some(time), Some(context), Some(generated)) =
        (fields.next(), fields.next(), fields.next())
    else {
        bail!("expected TIMESTAMP,ContextTokens,GeneratedTokens");
    };
    let t = parse_timestamp(time.trim())?;
    let t0 = *first.get_or_insert(t);
    let prompt: u32 = context.trim().parse().context("ContextTokens")?;
    let output: u32 = generated.trim().parse().context("GeneratedTokens")?;
    Ok(Request {
        arrival: (t - t0).max(0.0),
        model: None,
        prompt_tokens: prompt.max(1),
        output_tokens: output.max(1),
        segments: vec![Segment {
            id: mix(index, 0xA2),
            blocks: prompt / BLOCK_TOKENS,
        }],
        session: None,
        priority: None,
    })
}

/// Seconds since 1970 of `YYYY-MM-DD HH:MM:SS[.fraction]` (UTC).
fn parse_timestamp(text: &str) -> anyhow::Result<f64> {
    let bad = || anyhow::anyhow!("bad TIMESTAMP `{text}` (want YYYY-MM-DD HH:MM:SS.fff)");
    let (date, time) = text.split_once([' ', 'T']).ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let h: Vec<i64> = hms
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    if d.len() != 3 || h.len() != 3 {
        return Err(bad());
    }
    let fraction: f64 = format!("0.{frac}").parse().map_err(|_| bad())?;
    let days = days_from_civil(d[0], d[1], d[2]);
    Ok((days * 86_400 + h[0] * 3600 + h[1] * 60 + h[2]) as f64 + fraction)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_timestamps_parse() {
        let t = parse_timestamp("2023-11-16 18:15:46.6805900").unwrap();
        // 2023-11-16 is day 19677 since 1970.
        assert_eq!(days_from_civil(2023, 11, 16), 19677);
        assert!((t - (19677.0 * 86400.0 + 18.0 * 3600.0 + 15.0 * 60.0 + 46.68059)).abs() < 1e-6);
        assert!(parse_timestamp("yesterday").is_err());
    }

    #[test]
    fn mooncake_ids_become_shared_blocks() {
        let a = mooncake_request(r#"{"timestamp": 1500, "input_length": 1100, "output_length": 5, "hash_ids": [0, 1, 2]}"#, 0).unwrap();
        let b = mooncake_request(r#"{"timestamp": 1600, "input_length": 1100, "output_length": 5, "hash_ids": [0, 1, 9]}"#, 1).unwrap();
        assert_eq!(a.arrival, 1.5);
        let (ha, hb) = (a.block_hashes(), b.block_hashes());
        assert_eq!(ha.len(), 1100 / 16);
        // The first two 512-token ids are shared: 64 blocks of 16.
        assert_eq!(ha[..64], hb[..64]);
        assert_ne!(ha[64], hb[64]);
    }
}
