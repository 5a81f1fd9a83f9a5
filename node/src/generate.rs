//! The generation loop over a chain of shards (one shard = the whole model; several = an in-process pipeline,
//! hidden states handed from one to the next). Prefill runs the whole prompt as one step, then one step per token.

use std::time::{Duration, Instant};

use crate::sampler::{Sampler, SamplingParams};
use crate::shard::{HeadOutput, SeqId, Shard, ShardError, ShardInput, ShardOutput};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt is {prompt} tokens but the context holds {context}; shorten it or raise --ctx")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("invalid sampling parameters: {0}")]
    Sampling(String),
    #[error("the shard chain is empty or does not cover the model from embedding to head")]
    BadChain,
    #[error(transparent)]
    Shard(#[from] ShardError),
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Positions the sequence may hold (prompt + generated).
    pub context: usize,
    pub sampling: SamplingParams,
    /// Tokens that end generation (not emitted).
    pub stop: Vec<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated: usize,
    pub prefill: Duration,
    /// Time for the tokens after the first.
    pub decode: Duration,
    /// Generation ended on a stop token.
    pub stopped: bool,
}

impl GenerateStats {
    pub fn prefill_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }
    pub fn decode_tps(&self) -> f64 {
        self.generated.saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// Runs one step through every shard of the chain: token ids in, the head's output out.
pub fn run_chain(
    chain: &mut [Box<dyn Shard>],
    seq: SeqId,
    tokens: &[u32],
    want: HeadOutput,
) -> Result<ShardOutput, ShardError> {
    let mut hidden: Vec<f32> = Vec::new();
    let n = chain.len();
    for (i, shard) in chain.iter_mut().enumerate() {
        let input = if i == 0 { ShardInput::Tokens(tokens) } else { ShardInput::Hidden(&hidden) };
        match shard.forward(seq, input, want)? {
            ShardOutput::Hidden(h) if i + 1 < n => hidden = h,
            out if i + 1 == n => return Ok(out),
            _ => return Err(ShardError::BadInput("a middle shard produced a head output".into())),
        }
    }
    Err(ShardError::BadInput("empty shard chain".into()))
}

fn check_chain(chain: &[Box<dyn Shard>]) -> Result<(), GenerateError> {
    let (Some(first), Some(last)) = (chain.first(), chain.last()) else { return Err(GenerateError::BadChain) };
    let contiguous = chain.windows(2).all(|w| w[0].spec().layer_end == w[1].spec().layer_start);
    let n_layers = first.config().n_layers as u32;
    if !first.spec().embed
        || !last.spec().head
        || !contiguous
        || first.spec().layer_start != 0
        || last.spec().layer_end != n_layers
    {
        return Err(GenerateError::BadChain);
    }
    Ok(())
}

/// Opens a sequence on every shard and closes it again when dropped, whatever happens in between.
struct SeqGuard<'a> {
    chain: &'a mut [Box<dyn Shard>],
    seq: SeqId,
}

impl Drop for SeqGuard<'_> {
    fn drop(&mut self) {
        self.chain.iter_mut().for_each(|s| s.close_sequence(self.seq));
    }
}

static NEXT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Generates up to `max_tokens` tokens, calling `on_token` with each as soon as it is known (return false to stop).
pub fn generate(
    chain: &mut [Box<dyn Shard>],
    req: &GenerateRequest,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, GenerateStats), GenerateError> {
    check_chain(chain)?;
    req.sampling.validate().map_err(GenerateError::Sampling)?;
    if req.prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if req.prompt.len() >= req.context {
        return Err(GenerateError::PromptTooLong { prompt: req.prompt.len(), context: req.context });
    }
    let capacity = req.context.min(req.prompt.len() + req.max_tokens);
    let seq = NEXT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for s in chain.iter_mut() {
        s.open_sequence(seq, capacity)?;
    }
    let guard = SeqGuard { chain, seq };
    let mut sampler = Sampler::new(req.sampling);
    let want = if req.sampling.is_greedy() { HeadOutput::ArgmaxLast } else { HeadOutput::LogitsLast };
    let mut pick = |out: ShardOutput| -> Result<u32, ShardError> {
        match out {
            ShardOutput::Tokens(t) => t.last().copied().ok_or_else(|| ShardError::BadInput("no token produced".into())),
            ShardOutput::Logits(l) => Ok(sampler.sample(&l)),
            ShardOutput::Hidden(_) | ShardOutput::HiddenSum(_) => {
                Err(ShardError::BadInput("the last shard gave no token".into()))
            }
        }
    };

    let mut stats = GenerateStats { prompt_tokens: req.prompt.len(), ..Default::default() };
    let mut out = Vec::new();
    let t0 = Instant::now();
    let mut next = pick(run_chain(guard.chain, seq, &req.prompt, want)?)?;
    stats.prefill = t0.elapsed();
    tracing::debug!(seq, tokens = req.prompt.len(), ms = stats.prefill.as_secs_f64() * 1e3, "prefill");
    let t1 = Instant::now();
    while out.len() < req.max_tokens {
        if req.stop.contains(&next) {
            stats.stopped = true;
            break;
        }
        out.push(next);
        if !on_token(next) || out.len() == req.max_tokens || req.prompt.len() + out.len() > capacity {
            break;
        }
        let step = Instant::now();
        next = pick(run_chain(guard.chain, seq, &[next], want)?)?;
        tracing::trace!(seq, token = next, us = step.elapsed().as_micros() as u64, "decode step");
    }
    stats.decode = t1.elapsed();
    stats.generated = out.len();
    tracing::debug!(
        seq,
        generated = stats.generated,
        prefill_tps = stats.prefill_tps(),
        decode_tps = stats.decode_tps(),
        stopped = stats.stopped,
        "generation done"
    );
    Ok((out, stats))
}
