//! Turning logits into a token: greedy (temperature 0, the default), or temperature with top-k and top-p
//! filtering, applied in llama.cpp's order (top-k, top-p, temperature), reproducible for a seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use edge_protocol::stage::SamplingParams;

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler { params, rng: StdRng::seed_from_u64(params.seed) }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Advances the random stream past `n` draws (each non-greedy [`Sampler::sample`] makes exactly one), so a
    /// sequence resumed elsewhere continues where it was.
    pub fn skip(&mut self, n: u32) {
        if !self.params.is_greedy() {
            for _ in 0..n {
                let _ = self.rng.random::<f32>();
            }
        }
    }

    /// Picks a token from the logits of one position.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        if p.is_greedy() {
            return crate::reference::argmax(logits);
        }
        // Candidates sorted by logit, most likely first (stable: lower ids first on ties).
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs.iter().position(|&x| {
                acc += x;
                acc >= p.top_p
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            cand.truncate(keep);
            probs.truncate(keep);
        }
        // Temperature on the surviving logits, then draw.
        let weights: Vec<f32> = cand.iter().map(|c| ((c.1 - max) / p.temperature).exp()).collect();
        let total: f32 = weights.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (c, w) in cand.iter().zip(&weights) {
            if r < *w {
                return c.0;
            }
            r -= w;
        }
        cand.last().map_or(0, |c| c.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(SamplingParams { temperature: 5.0, top_k: 1, top_p: 1.0, seed: 7 });
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.5]), 1);
        }
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // probabilities ~ [0.84, 0.11, 0.04, 0.01]: top-p 0.8 keeps only the first.
        let logits = [4.0, 2.0, 1.0, -0.5];
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.8, seed: 1 });
        for _ in 0..100 {
            assert_eq!(s.sample(&logits), 0);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_distribution_follows_logits() {
        let logits = [1.0, 1.0, 0.0];
        let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 42 };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p);
            (0..200).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p);
            (0..200).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        let twos = a.iter().filter(|&&t| t == 2).count();
        // P(2) = 1 / (2e + 1) ~ 0.155: 31 of 200 expected.
        assert!((10..60).contains(&twos), "token 2 drawn {twos} times");
    }

    #[test]
    fn bad_params_are_rejected() {
        let d = SamplingParams::default();
        assert!(SamplingParams { temperature: -1.0, ..d }.validate().is_err());
        assert!(SamplingParams { temperature: f32::NAN, ..d }.validate().is_err());
        assert!(SamplingParams { top_p: 0.0, ..d }.validate().is_err());
        assert!(SamplingParams { top_p: 1.5, ..d }.validate().is_err());
        assert!(d.validate().is_ok());
    }
}
