//! Workloads for the fleet simulation and the load generator: real traces (infergate's JSONL,
//! Mooncake, Azure LLM inference CSV) and seeded generators (Poisson, bursty gamma, ramp,
//! diurnal, inference-perf-style shared prefix), with time scaling, rate scaling and windows.
//!
//! Traces carry no prompt text, so a prompt is described by the *content* of its 16-token
//! blocks: runs of block ids ([`Segment`]). Equal ids in equal order mean equal text, so the
//! prefix index and the engines' prefix caches see exactly the sharing the trace describes.
//! [`Request::block_hashes`] turns them into the chained hashes the router and the engine use;
//! [`Request::prompt_text`] turns them into deterministic text (64 bytes per block) for real
//! requests, which hash the same way in the gateway and in the simulator.

use std::hash::{Hash, Hasher};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// Tokens per prompt block (vLLM's KV block size, and the gateway's prefix block).
pub const BLOCK_TOKENS: u32 = 16;
/// Mooncake's `hash_ids` name blocks of this many tokens.
const MOONCAKE_BLOCK_TOKENS: u32 = 512;

/// One request of a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Seconds from the start of the workload.
    pub arrival: f64,
    /// Model name; None sends it to the first pool.
    pub model: Option<String>,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// What the prompt's full blocks contain, in order.
    pub segments: Vec<Segment>,
    pub session: Option<String>,
    pub priority: Option<String>,
}

/// `blocks` consecutive prompt blocks whose content is derived from `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub id: u64,
    pub blocks: u32,
}

impl Request {
    /// The content id of each full prompt block.
    fn block_ids(&self) -> impl Iterator<Item = u64> + '_ {
        let full = (self.prompt_tokens / BLOCK_TOKENS) as usize;
        self.segments
            .iter()
            .flat_map(|s| (0..s.blocks).map(move |j| mix(s.id, u64::from(j))))
            .take(full)
    }

    /// Chained hashes of the prompt's full blocks: equal hashes mean equal prefixes.
    pub fn block_hashes(&self) -> Vec<u64> {
        let mut previous = 0u64;
        self.block_ids()
            .map(|id| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                previous.hash(&mut h);
                id.hash(&mut h);
                previous = h.finish();
                previous
            })
            .collect()
    }

    /// A prompt of `prompt_tokens` tokens (4 bytes each) whose 64-byte blocks follow the
    /// segments: lowercase words derived from each block's id, so equal ids give equal text.
    pub fn prompt_text(&self) -> String {
        let bytes = self.prompt_tokens as usize * 4;
        let mut text = String::with_capacity(bytes + 64);
        for id in self.block_ids() {
            block_text(id, &mut text);
        }
        let mut tail = mix(self.arrival.to_bits(), u64::from(self.prompt_tokens));
        while text.len() < bytes {
            block_text(tail, &mut text);
            tail = mix(tail, 1);
        }
        text.truncate(bytes);
        text
    }
}

/// 64 bytes of text for one block: 16 four-letter "words" (3 letters and a space).
fn block_text(id: u64, out: &mut String) {
    let mut x = id;
    for _ in 0..16 {
        x = mix(x, 0x5bd1);
        for k in 0..3 {
            out.push((b'a' + ((x >> (8 * k)) % 26) as u8) as char);
        }
        out.push(' ');
    }
}

/// A well-mixed 64-bit function of two numbers (SplitMix64's finaliser).
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small seeded random source (SplitMix64) with the distributions workloads need.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(mix(seed, 0xC0FFEE))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0, 0)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -(1.0 - self.unit()).ln() / rate
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (1.0 - self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    /// Gamma(shape, 1) by Marsaglia and Tsang.
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = self.unit().max(f64::MIN_POSITIVE);
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.unit();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }
    /// Uniform integer around `mean` (±50 %), at least 1.
    pub fn around(&mut self, mean: u32) -> u32 {
        let m = f64::from(mean.max(1));
        ((0.5 + self.unit()) * m).round().max(1.0) as u32
    }
}

/// Where requests come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Trace { path: PathBuf, format: TraceFormat },
    Generator(Generator),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceFormat {
    /// infergate's own JSONL (see docs/workloads.md).
    Jsonl,
    /// Mooncake: `timestamp` (ms), `input_length`, `output_length`, `hash_ids`.
    Mooncake,
    /// Azure LLM inference CSV: `TIMESTAMP`, `ContextTokens`, `GeneratedTokens`.
    Azure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GeneratorKind {
    /// Exponential inter-arrival times at `--rate`.
    Poisson,
    /// Gamma inter-arrival times at `--rate` with coefficient of variation `--cv` (default 4:
    /// bursts). `--cv` also makes the other generators' arrivals bursty.
    Bursty,
    /// Poisson with the rate rising linearly from `--rate` to `--rate-end`.
    Ramp,
    /// Poisson with the rate `--rate × (1 + amplitude·sin(2πt/period))`.
    Diurnal,
    /// inference-perf's shared prefix: `--groups` system prompts, `--prompts-per-group`
    /// questions each, Poisson arrivals at `--rate`.
    SharedPrefix,
}

/// A seeded generator's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Generator {
    pub kind: GeneratorKind,
    /// Requests per second (the start rate for `ramp`, the mean for `diurnal`).
    pub rate: f64,
    pub rate_end: f64,
    pub duration: f64,
    pub cv: f64,
    pub period: f64,
    pub amplitude: f64,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    pub groups: u32,
    pub prompts_per_group: u32,
    pub system_prompt_tokens: u32,
    pub seed: u64,
}

/// Changes applied after reading: stretch time, thin or multiply requests, cut a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Shaping {
    /// Arrival times are multiplied by this (0.5 = the same requests in half the time).
    pub time_scale: f64,
    /// Requests are kept with this probability below 1; above 1, each is repeated (with its own
    /// tail) `rate_scale` times on average, the copies within a second after the original.
    pub rate_scale: f64,
    /// Keep arrivals in [start, start + length) of the scaled trace, re-based to 0.
    pub window_start: f64,
    pub window_length: Option<f64>,
    pub max_requests: Option<usize>,
    pub seed: u64,
}

impl Default for Shaping {
    fn default() -> Self {
        Self {
            time_scale: 1.0,
            rate_scale: 1.0,
            window_start: 0.0,
            window_length: None,
            max_requests: None,
            seed: 0,
        }
    }
}

/// Reads or generates the workload, shaped and sorted by arrival.
pub fn load(source: &Source, shaping: &Shaping) -> anyhow::Result<Vec<Request>> {
    let raw = match source {
        Source::Trace { path, format } => read_trace(path, *format)?,
        Source::Generator(g) => generate(g),
    };
    Ok(shape(raw, shaping))
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

fn read_trace(path: &Path, format: TraceFormat) -> anyhow::Result<Vec<Request>> {
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

/// Generates a seeded workload.
pub fn generate(g: &Generator) -> Vec<Request> {
    let mut rng = Rng::new(g.seed);
    let mut out = Vec::new();
    let peak = match g.kind {
        GeneratorKind::Ramp => g.rate.max(g.rate_end),
        GeneratorKind::Diurnal => g.rate * (1.0 + g.amplitude.abs()),
        _ => g.rate,
    };
    if peak <= 0.0 || g.duration <= 0.0 {
        return out;
    }
    let rate_at = |t: f64| match g.kind {
        GeneratorKind::Ramp => g.rate + (g.rate_end - g.rate) * (t / g.duration),
        GeneratorKind::Diurnal => {
            g.rate * (1.0 + g.amplitude * (std::f64::consts::TAU * t / g.period.max(1e-9)).sin())
        }
        _ => g.rate,
    };
    let shape = 1.0 / (g.cv * g.cv).max(1e-6);
    let mut t = 0.0;
    loop {
        // Gamma inter-arrival times with the configured variation (cv 1 is Poisson); a ramp or
        // a diurnal curve thins this stream, which keeps its bursts.
        t += if (g.cv - 1.0).abs() < 1e-9 {
            rng.exponential(peak)
        } else {
            rng.gamma(shape) / (shape * peak)
        };
        if t >= g.duration {
            break;
        }
        // Thinning turns a constant-rate stream into one at `rate_at(t)`.
        if matches!(g.kind, GeneratorKind::Ramp | GeneratorKind::Diurnal)
            && rng.unit() * peak > rate_at(t).max(0.0)
        {
            continue;
        }
        let index = out.len() as u64;
        let output_tokens = rng.around(g.output_tokens);
        let request = match g.kind {
            GeneratorKind::SharedPrefix => {
                let group = rng.next_u64() % u64::from(g.groups.max(1));
                let question = rng.next_u64() % u64::from(g.prompts_per_group.max(1));
                let group_id = mix(g.seed ^ 0x5EED, group);
                Request {
                    arrival: t,
                    model: None,
                    prompt_tokens: g.system_prompt_tokens + g.prompt_tokens,
                    output_tokens,
                    segments: vec![
                        Segment {
                            id: group_id,
                            blocks: g.system_prompt_tokens / BLOCK_TOKENS,
                        },
                        Segment {
                            id: mix(group_id, question + 1),
                            blocks: g.prompt_tokens.div_ceil(BLOCK_TOKENS),
                        },
                    ],
                    session: Some(format!("group-{group}")),
                    priority: None,
                }
            }
            _ => {
                let prompt_tokens = rng.around(g.prompt_tokens);
                Request {
                    arrival: t,
                    model: None,
                    prompt_tokens,
                    output_tokens,
                    segments: vec![Segment {
                        id: mix(g.seed, index),
                        blocks: prompt_tokens / BLOCK_TOKENS,
                    }],
                    session: None,
                    priority: None,
                }
            }
        };
        out.push(request);
    }
    out
}

/// Applies time scaling, rate scaling and the window.
pub fn shape(requests: Vec<Request>, s: &Shaping) -> Vec<Request> {
    let mut rng = Rng::new(s.seed ^ 0x5CA1E);
    let mut out = Vec::with_capacity(requests.len());
    for mut r in requests {
        r.arrival *= s.time_scale;
        let copies = {
            let whole = s.rate_scale.floor();
            whole as u32 + u32::from(rng.unit() < s.rate_scale - whole)
        };
        for copy in 0..copies {
            let mut c = r.clone();
            if copy > 0 {
                // A copy shares the prefix it names but has its own last blocks, and arrives
                // within a second of the original (the trace's shape at coarser scales stays).
                c.arrival += rng.unit();
                if let Some(last) = c.segments.last_mut() {
                    last.id = mix(last.id, u64::from(copy));
                }
                c.session = c.session.map(|k| format!("{k}/{copy}"));
            }
            out.push(c);
        }
    }
    out.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    let end = s
        .window_length
        .map_or(f64::INFINITY, |l| s.window_start + l);
    let mut out: Vec<Request> = out
        .into_iter()
        .filter(|r| r.arrival >= s.window_start && r.arrival < end)
        .map(|mut r| {
            r.arrival -= s.window_start;
            r
        })
        .collect();
    if let Some(max) = s.max_requests {
        out.truncate(max);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kind: GeneratorKind) -> Generator {
        Generator {
            kind,
            rate: 10.0,
            rate_end: 30.0,
            duration: 100.0,
            cv: if kind == GeneratorKind::Bursty {
                3.0
            } else {
                1.0
            },
            period: 50.0,
            amplitude: 0.5,
            prompt_tokens: 200,
            output_tokens: 50,
            groups: 4,
            prompts_per_group: 5,
            system_prompt_tokens: 1000,
            seed: 7,
        }
    }

    #[test]
    fn generators_hit_their_rates_and_are_deterministic() {
        let poisson = generate(&params(GeneratorKind::Poisson));
        assert!((900..1100).contains(&poisson.len()), "{}", poisson.len());
        assert_eq!(poisson, generate(&params(GeneratorKind::Poisson)));
        let ramp = generate(&params(GeneratorKind::Ramp));
        // Mean rate 20/s; the second half carries more than the first.
        assert!((1800..2200).contains(&ramp.len()), "{}", ramp.len());
        let first = ramp.iter().filter(|r| r.arrival < 50.0).count();
        assert!(
            first * 10 < (ramp.len() - first) * 8,
            "{first} of {}",
            ramp.len()
        );
        let bursty = generate(&params(GeneratorKind::Bursty));
        assert!((700..1300).contains(&bursty.len()), "{}", bursty.len());
        // Bursty: inter-arrival CV well above Poisson's 1.
        let gaps: Vec<f64> = bursty
            .windows(2)
            .map(|w| w[1].arrival - w[0].arrival)
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        assert!(sd / mean > 2.0, "cv {}", sd / mean);
    }

    #[test]
    fn shared_prefix_requests_share_their_system_prompt_blocks() {
        let reqs = generate(&params(GeneratorKind::SharedPrefix));
        let a = reqs[0].block_hashes();
        let same_group = reqs[1..]
            .iter()
            .find(|r| r.session == reqs[0].session && r.segments[1] != reqs[0].segments[1])
            .expect("another question of the same group");
        let b = same_group.block_hashes();
        let shared = 1000 / BLOCK_TOKENS as usize;
        assert_eq!(a.len(), 1200 / BLOCK_TOKENS as usize);
        assert_eq!(a[..shared], b[..shared]);
        assert_ne!(a[shared], b[shared]);
        // The same in text: equal leading 64-byte blocks.
        let (ta, tb) = (reqs[0].prompt_text(), same_group.prompt_text());
        assert_eq!(ta.len(), 1200 * 4);
        assert_eq!(ta[..shared * 64], tb[..shared * 64]);
        assert_ne!(
            ta[shared * 64..shared * 64 + 64],
            tb[shared * 64..shared * 64 + 64]
        );
    }

    #[test]
    fn shaping_scales_thins_and_windows() {
        let reqs = generate(&params(GeneratorKind::Poisson));
        let n = reqs.len();
        let half_time = shape(
            reqs.clone(),
            &Shaping {
                time_scale: 0.5,
                ..Default::default()
            },
        );
        assert_eq!(half_time.len(), n);
        assert!(half_time.last().unwrap().arrival < 50.0);
        let doubled = shape(
            reqs.clone(),
            &Shaping {
                rate_scale: 2.0,
                ..Default::default()
            },
        );
        assert_eq!(doubled.len(), 2 * n);
        let thinned = shape(
            reqs.clone(),
            &Shaping {
                rate_scale: 0.25,
                ..Default::default()
            },
        );
        assert!((n / 5..n / 3).contains(&thinned.len()), "{}", thinned.len());
        let window = shape(
            reqs,
            &Shaping {
                window_start: 10.0,
                window_length: Some(20.0),
                max_requests: Some(100),
                ..Default::default()
            },
        );
        assert_eq!(window.len(), 100);
        assert!(window.iter().all(|r| r.arrival < 20.0));
    }

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
