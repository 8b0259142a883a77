//! Seeded workload generators: arrivals (Poisson, bursty gamma, a ramp, a diurnal curve) and
//! prompts (independent, or inference-perf's shared system prompts), the same for the same seed.

use super::{BLOCK_TOKENS, Request, Rng, Segment, mix};

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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::fleet_sim::workload) fn params(kind: GeneratorKind) -> Generator {
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
}
