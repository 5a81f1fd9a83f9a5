//! Turning logits into a token: greedy (temperature 0, the default), or temperature with top-k and top-p
//! filtering, applied in llama.cpp's order (top-k, top-p, temperature), reproducible for a seed. Before that, a
//! job's logit bias and presence/frequency penalties (OpenAI's definitions, over the tokens the job generated)
//! shift the logits, and a job's grammar masks the tokens it does not allow ([`crate::grammar`]); the token's
//! log-probability, when asked for, is taken from the model's own distribution.

use std::collections::HashMap;

use edge_protocol::stage::{JobParams, Penalties, TokenLogprobs};

use crate::grammar::Constraint;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use edge_protocol::stage::SamplingParams;

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    bias: Vec<(u32, f32)>,
    penalties: Penalties,
    /// How often each token was generated (kept only when a penalty is set).
    counts: HashMap<u32, u32>,
    /// Alternatives to report with each token's log-probability (None: no log-probabilities).
    logprobs: Option<usize>,
    /// The job's grammar, matched against the tokens generated so far.
    constraint: Option<Constraint>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler {
            params,
            rng: StdRng::seed_from_u64(params.seed),
            bias: Vec::new(),
            penalties: Penalties::default(),
            counts: HashMap::new(),
            logprobs: None,
            constraint: None,
        }
    }

    /// Constrains the tokens to `c`'s grammar, which has already matched `history` (a resumed sequence's tokens).
    pub fn constrain(&mut self, mut c: Constraint, history: &[u32]) {
        history.iter().for_each(|&t| c.advance(t));
        self.constraint = Some(c);
    }

    /// The sampler of a job's sequence, already past the tokens and draws the job made before (a resumed sequence).
    pub fn for_job(job: &JobParams) -> Sampler {
        let mut s = Sampler::new(job.sampling);
        s.bias = job.logit_bias.clone();
        s.penalties = job.penalties;
        s.logprobs = job.logprobs.map(usize::from);
        job.history.iter().for_each(|&t| s.record(t));
        s.skip(job.skip_draws);
        s
    }

    fn record(&mut self, token: u32) {
        if !self.penalties.is_none() {
            *self.counts.entry(token).or_insert(0) += 1;
        }
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
        self.pick(logits).0
    }

    /// Picks a token from the logits of one position, with its log-probability if the job asked for it.
    pub fn pick(&mut self, logits: &[f32]) -> (u32, Option<TokenLogprobs>) {
        let token = if self.bias.is_empty() && self.counts.is_empty() && self.constraint.is_none() {
            self.draw(logits)
        } else {
            let mut shifted = logits.to_vec();
            for &(t, b) in &self.bias {
                if let Some(l) = shifted.get_mut(t as usize) {
                    *l += b;
                }
            }
            let Penalties { presence, frequency } = self.penalties;
            for (&t, &n) in &self.counts {
                if let Some(l) = shifted.get_mut(t as usize) {
                    *l -= presence + frequency * n as f32;
                }
            }
            if let Some(c) = &mut self.constraint {
                c.mask(&mut shifted);
            }
            self.draw(&shifted)
        };
        self.record(token);
        if let Some(c) = &mut self.constraint {
            c.advance(token);
        }
        (token, self.logprobs.map(|k| logprobs(logits, token, k)))
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
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
        // Rounding left a sliver: the last token that had any weight (never a masked one).
        cand.iter().zip(&weights).rev().find(|(_, w)| **w > 0.0).map_or(cand[0].0, |(c, _)| c.0)
    }
}

/// `token`'s log-probability under `logits` (log-softmax) and the `k` most likely tokens with theirs (most likely
/// first, lower ids first on ties).
pub fn logprobs(logits: &[f32], token: u32, k: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if top.len() == k && l <= top[k - 1].1 {
                continue;
            }
            let at = top.partition_point(|&(_, x)| x >= l);
            top.insert(at, (i as u32, l));
            top.truncate(k);
        }
    }
    top.iter_mut().for_each(|e| e.1 -= lse);
    let logprob = logits.get(token as usize).map_or(f32::NEG_INFINITY, |&l| l - lse);
    TokenLogprobs { logprob, top }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_the_log_softmax_and_the_top_is_sorted() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        let lp = logprobs(&logits, 2, 3);
        assert!((lp.logprob - (2.0 - z.ln())).abs() < 1e-5, "{lp:?}");
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2], "ties keep the lower id first");
        assert!((lp.top[0].1 - (3.0 - z.ln())).abs() < 1e-5);
        assert!(logprobs(&logits, 0, 0).top.is_empty());
        assert_eq!(logprobs(&logits, 0, 9).top.len(), 5);
    }

    fn job(f: impl FnOnce(&mut JobParams)) -> JobParams {
        let mut j = JobParams::new(64, 8);
        j.sampling.temperature = 0.0;
        f(&mut j);
        j
    }

    #[test]
    fn logit_bias_moves_the_greedy_choice() {
        let logits = [0.0, 2.0, 1.0];
        assert_eq!(Sampler::for_job(&job(|_| {})).sample(&logits), 1);
        let mut s = Sampler::for_job(&job(|j| j.logit_bias = vec![(1, -100.0)]));
        assert_eq!(s.sample(&logits), 2);
        let mut s = Sampler::for_job(&job(|j| j.logit_bias = vec![(0, 100.0), (99, 5.0)]));
        assert_eq!(s.sample(&logits), 0, "ids outside the vocabulary are ignored");
        // The reported log-probability is the model's, not the biased one.
        let mut s = Sampler::for_job(&job(|j| {
            j.logit_bias = vec![(0, 100.0)];
            j.logprobs = Some(1);
        }));
        let (t, lp) = s.pick(&logits);
        let lp = lp.expect("asked for");
        assert_eq!((t, lp.top[0].0), (0, 1));
        assert!((lp.logprob - logprobs(&logits, 0, 0).logprob).abs() < 1e-6);
    }

    #[test]
    fn penalties_count_generated_tokens_including_the_history() {
        // Token 0 leads by 1.0: a frequency penalty of 0.6 lets it win once, then token 1 (0.6 * 2 > 1.0).
        let logits = [1.0, 0.0];
        let mut s = Sampler::for_job(&job(|j| j.penalties = Penalties { presence: 0.0, frequency: 0.6 }));
        let picks: Vec<u32> = (0..4).map(|_| s.sample(&logits)).collect();
        assert_eq!(picks, [0, 0, 1, 0]);
        // Resumed after the first two: the same continuation.
        let mut s = Sampler::for_job(&job(|j| {
            j.penalties = Penalties { presence: 0.0, frequency: 0.6 };
            j.history = vec![0, 0];
        }));
        assert_eq!([s.sample(&logits), s.sample(&logits)], [1, 0]);
        // Presence: once is enough to lose the lead.
        let mut s = Sampler::for_job(&job(|j| j.penalties = Penalties { presence: 1.5, frequency: 0.0 }));
        assert_eq!([s.sample(&logits), s.sample(&logits), s.sample(&logits)], [0, 1, 0]);
        // Negative values encourage repetition.
        let mut s = Sampler::for_job(&job(|j| j.penalties = Penalties { presence: -2.0, frequency: 0.0 }));
        assert_eq!([s.sample(&[0.0, 1.0]), s.sample(&[1.5, 1.0])], [1, 1]);
    }

    #[test]
    fn a_grammar_masks_the_draw_and_a_resumed_sequence_continues_it() {
        use edge_protocol::stage::{Grammar, Vocabulary};
        // Tokens: "a", "b", "c", end. The grammar wants "ab" then the end; the model prefers "c".
        let v = Vocabulary::from_pieces([&b"a"[..], b"b", b"c", b"<e>"], vec![3], vec![3]);
        let g = crate::grammar::Grammars::new(&v).unwrap();
        let grammar = Grammar::Lark(r#"start: "ab""#.into());
        let logits = [0.0, 1.0, 5.0, -1.0];
        for temperature in [0.0, 1.0] {
            let mut s = Sampler::for_job(&job(|j| j.sampling.temperature = temperature));
            s.constrain(g.compile(&grammar).unwrap(), &[]);
            let picks: Vec<u32> = (0..3).map(|_| s.sample(&logits)).collect();
            assert_eq!(picks, [0, 1, 3], "temperature {temperature}");
        }
        // Resumed after "a": the grammar has matched it, so "b" comes next.
        let mut s = Sampler::for_job(&job(|_| {}));
        s.constrain(g.compile(&grammar).unwrap(), &[0]);
        assert_eq!([s.sample(&logits), s.sample(&logits)], [1, 3]);
    }

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
