//! Shaping a workload after it is read or generated: arrival times stretched, requests thinned
//! or repeated, a window of it kept.

use super::{Request, Rng, mix};

/// Changes applied after reading: spread rounded arrival times, stretch time, thin or multiply
/// requests, cut a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Shaping {
    /// Each arrival moves later by a uniform share of this (seconds, before `time_scale`): a
    /// trace whose timestamps are rounded (Mooncake's are multiples of 3 s) otherwise sends
    /// each rounded bucket in one instant.
    pub arrival_jitter: f64,
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
            arrival_jitter: 0.0,
            time_scale: 1.0,
            rate_scale: 1.0,
            window_start: 0.0,
            window_length: None,
            max_requests: None,
            seed: 0,
        }
    }
}

/// Applies the jitter, time scaling, rate scaling and the window.
pub fn shape(requests: Vec<Request>, s: &Shaping) -> Vec<Request> {
    let mut rng = Rng::new(s.seed ^ 0x5CA1E);
    let mut out = Vec::with_capacity(requests.len());
    for (i, mut r) in requests.into_iter().enumerate() {
        if s.arrival_jitter > 0.0 {
            // Its own stream of numbers: the other shaping draws stay as they were.
            let unit = (mix(s.seed ^ 0x717E5, i as u64) >> 11) as f64 / (1u64 << 53) as f64;
            r.arrival += unit * s.arrival_jitter;
        }
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
    use super::super::generate::{GeneratorKind, generate, tests::params};
    use super::*;

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
}
