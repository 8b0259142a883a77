//! Deterministic randomness and generated text for the simulator: a SplitMix64 generator (so a
//! `--seed` reproduces every answer length and word) and words of about four bytes, matching the
//! 4-bytes-per-token tokenizer approximation.

/// SplitMix64: tiny, fast, and the same sequence on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An answer length when the request does not fix one: exponential with the given mean,
    /// at least 1 (LLM answer lengths are long-tailed).
    pub fn answer_length(&mut self, mean: f64) -> u32 {
        let u = self.next_f64();
        let len = -mean * (1.0 - u).ln();
        (len.round() as u32).max(1)
    }
}

const WORDS: [&str; 16] = [
    " the", " lamp", " of", " code", " runs", " fast", " and", " far", " on", " warm", " GPUs",
    " yet", " it", " can", " wait", " now",
];

/// The text of token `index` of an answer seeded by `seed`: one short word.
pub fn token_text(seed: u64, index: u32) -> &'static str {
    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(u64::from(index)));
    WORDS[(rng.next_u64() % WORDS.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn answer_lengths_have_the_requested_mean() {
        let mut rng = Rng::new(7);
        let n = 20_000;
        let mean = (0..n)
            .map(|_| f64::from(rng.answer_length(100.0)))
            .sum::<f64>()
            / f64::from(n);
        assert!((95.0..105.0).contains(&mean), "{mean}");
    }

    #[test]
    fn token_text_is_deterministic() {
        assert_eq!(token_text(3, 5), token_text(3, 5));
        assert!(WORDS.contains(&token_text(9, 0)));
    }
}
