//! The unit of execution: one loaded shard (a layer range of a model, optionally with the embedding and the
//! head) that serves any number of sequences, each with its own KV cache.
//!
//! Both backends implement [`Shard`]; whole-model generation is the single-shard case, and a pipeline is a chain
//! of shards passing hidden states.

use std::collections::HashMap;

use edge_protocol::ShardSpec;

use crate::gguf::GgufError;
use crate::model::ModelConfig;

/// Identifies a sequence (a generation job) on a shard.
pub type SeqId = u64;

/// What goes into a shard: token ids (first shard) or the previous shard's hidden states `(n_tokens, dim)`.
#[derive(Debug, Clone, Copy)]
pub enum ShardInput<'a> {
    Tokens(&'a [u32]),
    Hidden(&'a [f32]),
}

/// What the last shard should produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadOutput {
    /// Greedy token for the last position (argmax on the device: 4 bytes read back).
    ArgmaxLast,
    /// Greedy token for every position of the step (prompt checks).
    ArgmaxAll,
    /// Full logits of the last position (for sampling).
    LogitsLast,
    /// The final-normed hidden state of every position of the step, summed (an embedding pools these sums over
    /// the chunks of a prompt; no logits are computed).
    HiddenSum,
}

/// What comes out of a shard.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardOutput {
    /// Hidden states `(n_tokens, dim)` for the next shard.
    Hidden(Vec<f32>),
    /// Argmax token ids (one, or one per position).
    Tokens(Vec<u32>),
    /// Logits `(vocab)` of the last position.
    Logits(Vec<f32>),
    /// `(dim)`: the sum over the step's positions of the hidden state after the final norm.
    HiddenSum(Vec<f32>),
}

/// The final norm (`weight`, `eps`) of each row of `x` `(n, dim)`, summed over the rows: what
/// [`HeadOutput::HiddenSum`] returns on every backend.
pub fn normed_sum(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let dim = weight.len();
    let (mut sum, mut row) = (vec![0.0; dim], vec![0.0; dim]);
    for xi in x.chunks_exact(dim) {
        crate::reference::rmsnorm(&mut row, xi, weight, eps);
        sum.iter_mut().zip(&row).for_each(|(s, r)| *s += r);
    }
    sum
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The model file or shard description is unusable.
    #[error(transparent)]
    Model(#[from] GgufError),
    /// No sequence with this id is open on the shard.
    #[error("unknown sequence {0}")]
    UnknownSequence(SeqId),
    /// A sequence with this id is already open.
    #[error("sequence {0} is already open")]
    SequenceExists(SeqId),
    /// The step would run past the sequence's context capacity.
    #[error("context full: {need} positions needed, the sequence holds {capacity}")]
    ContextFull { need: usize, capacity: usize },
    /// The input does not fit the shard (tokens into a middle shard, wrong hidden size, token id out of range).
    #[error("bad input: {0}")]
    BadInput(String),
    /// The GPU failed (no adapter, device lost, out of memory).
    #[error("gpu: {0}")]
    Gpu(String),
    /// Another member of the tensor-parallel group failed (went away, sent nothing in time, sent a wrong-sized
    /// partial sum): the step may succeed on another plan.
    #[error("tensor-parallel group: {0}")]
    Group(String),
}

/// Tensor parallelism: a member holding a slice of every layer's heads and FFN columns computes partial sums of
/// each attention and FFN output; `all_reduce` adds the other members' partials to its own, in place, so every
/// member continues with the same residual stream. Called twice per layer (attention, then FFN) with
/// `(n_tokens, dim)` values, in the same order on every member.
pub trait Reducer {
    fn all_reduce(&mut self, partial: &mut [f32]) -> Result<(), ShardError>;
}

/// The reducer of a shard that holds whole layers: its partial sums are the whole sums.
pub struct NoReduce;

impl Reducer for NoReduce {
    fn all_reduce(&mut self, _: &mut [f32]) -> Result<(), ShardError> {
        Ok(())
    }
}

/// One sequence's part of a batched step ([`Shard::forward_batch`]).
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub seq: SeqId,
    pub input: ShardInput<'a>,
    pub want: HeadOutput,
}

pub trait Shard {
    fn spec(&self) -> ShardSpec;
    fn config(&self) -> &ModelConfig;
    /// Short description of the backend and device, e.g. `wgpu/llvmpipe (LLVM 15.0.6, 256 bits)`.
    fn backend_name(&self) -> String;
    /// Opens a sequence able to hold `capacity` positions.
    fn open_sequence(&mut self, seq: SeqId, capacity: usize) -> Result<(), ShardError>;
    /// Frees a sequence's KV cache. Unknown ids are ignored.
    fn close_sequence(&mut self, seq: SeqId);
    /// Number of positions the sequence holds.
    fn sequence_len(&self, seq: SeqId) -> Result<usize, ShardError>;
    /// Forgets positions `len..` of a sequence (to replay or roll back). The cpu backend refuses to go back to a
    /// length whose window a sliding-window layer no longer holds (back to 0 always works).
    fn truncate(&mut self, seq: SeqId, len: usize) -> Result<(), ShardError>;
    /// Gives the open, empty sequence `to` a copy of the first `len` positions of `from` (choices of one request
    /// share their prompt's prefill): `to` then continues as if it had run them itself.
    fn fork(&mut self, from: SeqId, to: SeqId, len: usize) -> Result<(), ShardError>;
    /// Runs the shard over the next positions of `seq`. A shard without the head returns
    /// [`ShardOutput::Hidden`] whatever `want` says.
    fn forward(&mut self, seq: SeqId, input: ShardInput<'_>, want: HeadOutput) -> Result<ShardOutput, ShardError> {
        self.forward_reduce(seq, input, want, &mut NoReduce)
    }
    /// [`Shard::forward`] for a member of a tensor-parallel stage: `reduce` sums the partial results with the
    /// other members' after each attention and FFN block (a shard of whole layers never calls it).
    fn forward_reduce(
        &mut self,
        seq: SeqId,
        input: ShardInput<'_>,
        want: HeadOutput,
        reduce: &mut dyn Reducer,
    ) -> Result<ShardOutput, ShardError>;
    /// Whether [`Shard::forward_batch`] runs a batch as one forward (and checks it whole first); callers batch
    /// only then.
    fn batches(&self) -> bool {
        false
    }
    /// Runs the steps of several different sequences as one batch (continuous batching): each output is what
    /// [`Shard::forward_reduce`] of that step alone returns. A backend that batches (cpu and wgpu: one weight
    /// read for all rows) checks every step before it runs any, so a bad step changes no sequence; this default
    /// (the f32 reference) runs them one after the other.
    fn forward_batch(&mut self, steps: &[Step<'_>], reduce: &mut dyn Reducer) -> Result<Vec<ShardOutput>, ShardError> {
        check_distinct(steps)?;
        steps.iter().map(|s| self.forward_reduce(s.seq, s.input, s.want, reduce)).collect()
    }
}

/// A batch names each sequence at most once (a sequence's steps are ordered; a batch has no order).
pub fn check_distinct(steps: &[Step<'_>]) -> Result<(), ShardError> {
    let mut seen = std::collections::HashSet::new();
    match steps.iter().find(|s| !seen.insert(s.seq)) {
        Some(s) => Err(ShardError::BadInput(format!("sequence {} appears twice in one batch", s.seq))),
        None => Ok(()),
    }
}

/// One sequence on a shard: the backend's KV state, the positions it holds and the positions it may hold.
pub struct Sequence<S> {
    pub kv: S,
    pub len: usize,
    pub capacity: usize,
}

/// The sequences a shard serves. Both backends keep their KV state here, so the bookkeeping (unknown ids,
/// duplicates, capacity) is written once.
pub struct Sequences<S> {
    map: HashMap<SeqId, Sequence<S>>,
}

impl<S> Default for Sequences<S> {
    fn default() -> Self {
        Sequences { map: HashMap::new() }
    }
}

impl<S> Sequences<S> {
    /// Checks that `seq` may be opened for `capacity` positions (a new id, a capacity the model supports);
    /// the backend then builds its KV state and calls [`Sequences::insert`].
    pub fn check_open(&self, cfg: &ModelConfig, seq: SeqId, capacity: usize) -> Result<(), ShardError> {
        if self.map.contains_key(&seq) {
            return Err(ShardError::SequenceExists(seq));
        }
        check_capacity(cfg, capacity)
    }

    /// Adds a checked sequence with its KV state.
    pub fn insert(&mut self, seq: SeqId, capacity: usize, kv: S) {
        self.map.insert(seq, Sequence { kv, len: 0, capacity });
    }

    /// Frees a sequence. Unknown ids are ignored.
    pub fn close(&mut self, seq: SeqId) {
        self.map.remove(&seq);
    }

    pub fn get(&self, seq: SeqId) -> Result<&Sequence<S>, ShardError> {
        self.map.get(&seq).ok_or(ShardError::UnknownSequence(seq))
    }

    pub fn get_mut(&mut self, seq: SeqId) -> Result<&mut Sequence<S>, ShardError> {
        self.map.get_mut(&seq).ok_or(ShardError::UnknownSequence(seq))
    }

    /// The sequence, if `n` more positions fit in it.
    pub fn with_room(&mut self, seq: SeqId, n: usize) -> Result<&mut Sequence<S>, ShardError> {
        let s = self.get_mut(seq)?;
        if s.len + n > s.capacity {
            return Err(ShardError::ContextFull { need: s.len + n, capacity: s.capacity });
        }
        Ok(s)
    }

    /// The checks and bookkeeping of [`Shard::fork`]: `copy` gets both sequences' KV states and copies the first
    /// `len` positions.
    pub fn fork(
        &mut self,
        from: SeqId,
        to: SeqId,
        len: usize,
        copy: impl FnOnce(&S, &mut S) -> Result<(), ShardError>,
    ) -> Result<(), ShardError> {
        if from == to {
            return Err(ShardError::BadInput(format!("sequence {from} cannot be forked into itself")));
        }
        let [f, t] = self.map.get_disjoint_mut([&from, &to]);
        let f = f.ok_or(ShardError::UnknownSequence(from))?;
        let t = t.ok_or(ShardError::UnknownSequence(to))?;
        if len == 0 || len > f.len || len > t.capacity || t.len != 0 {
            return Err(ShardError::BadInput(format!(
                "cannot fork {len} positions of sequence {from} (holding {}) into sequence {to} (holding {} of {})",
                f.len, t.len, t.capacity
            )));
        }
        copy(&f.kv, &mut t.kv)?;
        t.len = len;
        Ok(())
    }

    /// Forgets positions `len..` of a sequence.
    pub fn truncate(&mut self, seq: SeqId, len: usize) -> Result<(), ShardError> {
        let s = self.get_mut(seq)?;
        s.len = s.len.min(len);
        Ok(())
    }
}

/// Shared check of a requested sequence capacity: at least one position, at most the model's context length
/// (which also bounds every KV allocation that follows from it).
pub fn check_capacity(cfg: &ModelConfig, capacity: usize) -> Result<(), ShardError> {
    if capacity == 0 || capacity > cfg.context {
        return Err(ShardError::ContextFull { need: capacity, capacity: cfg.context });
    }
    Ok(())
}

/// Shared checks of a step's input against a shard; returns the number of tokens in the step.
pub fn check_input(spec: &ShardSpec, cfg: &ModelConfig, input: &ShardInput<'_>) -> Result<usize, ShardError> {
    let n = match (input, spec.embed) {
        (ShardInput::Tokens(t), true) => {
            if let Some(bad) = t.iter().find(|&&t| t as usize >= cfg.vocab) {
                return Err(ShardError::BadInput(format!("token id {bad} is outside the vocabulary ({})", cfg.vocab)));
            }
            t.len()
        }
        (ShardInput::Hidden(h), false) => {
            if h.len() % cfg.dim != 0 {
                return Err(ShardError::BadInput(format!(
                    "hidden state of {} floats is not a multiple of dim {}",
                    h.len(),
                    cfg.dim
                )));
            }
            h.len() / cfg.dim
        }
        (ShardInput::Tokens(_), false) => {
            return Err(ShardError::BadInput("this shard takes hidden states, not tokens".into()))
        }
        (ShardInput::Hidden(_), true) => {
            return Err(ShardError::BadInput("this shard takes token ids, not hidden states".into()))
        }
    };
    if n == 0 {
        return Err(ShardError::BadInput("empty step".into()));
    }
    Ok(n)
}
