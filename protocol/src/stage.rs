//! The stage protocol ([`STAGE_PROTOCOL`]): everything that runs a plan. Dedicated libp2p streams carrying
//! [`crate::bulk`] frames (u32 length, then bincode), of two kinds, named by the first frame ([`StageOpen`]):
//!
//! - a **session** (coordinator -> node, one per stage member of a plan): the coordinator sends [`SessionMsg`]s
//!   (load this stage: [`Manifest`] + tensor [`SessionMsg::Data`]; [`SessionMsg::Wire`] to its neighbours; start
//!   and cancel sequences) and the node answers with [`NodeMsg`]s (which tensors it still needs, loaded, wired,
//!   sampled tokens, per-sequence timings, errors). The stage lives as long as its session: when the stream
//!   closes the node frees it.
//! - a **pipe** (node -> node, opened after wiring): [`PipeMsg`]s — hidden states to the next stage, sampled
//!   tokens around the ring back to the first stage, and within a tensor-parallel stage the steps the leader
//!   forwards, which of them run together ([`PipeMsg::Run`]) and the partial sums; a batch sent on is announced
//!   ([`PipeMsg::Group`]) so the next stage runs it whole. Data never passes through the coordinator.
//!
//! The node answers the first frame with a [`StageAccept`] before anything else flows: the opener knows its stream
//! was taken (or why it was refused) instead of finding out at its first write. libp2p drops an inbound stream
//! when the node's accept queue is momentarily full (a burst of pipes on a busy machine); the opener sees that
//! stream end without an answer and opens another.
//!
//! Nothing here is code or a graph: the node only accepts tensors for the layer range and slice it is told,
//! checks each against its blake3 hash, and refuses anything larger than the limits below.

use serde::{Deserialize, Serialize};

use crate::shard::{LayerSlice, ShardSpec};
use crate::wire::{check_len, check_str, WireError};

/// The stage protocol name.
pub const STAGE_PROTOCOL: &str = "/edge-infer/stage/9";
const _: () = assert!(crate::is_versioned(STAGE_PROTOCOL));

/// Largest frame of a session or pipe (8 MiB, [`crate::bulk::MAX_FRAME`]).
pub const MAX_STAGE_FRAME: usize = crate::bulk::MAX_FRAME;
/// Largest piece of tensor data in one [`SessionMsg::Data`].
pub const MAX_DATA_CHUNK: usize = 1 << 20;
/// Most tensors in one stage.
pub const MAX_TENSORS: usize = 8192;
/// Largest stage metadata (a tensor-less GGUF).
pub const MAX_METADATA: usize = 1 << 20;
/// Longest tensor name (GGUF's own limit is 64).
pub const MAX_TENSOR_NAME: usize = 256;
/// Most tokens in a prompt or a step.
pub const MAX_TOKENS: usize = 1 << 20;
/// Most members of a tensor-parallel stage, and most stop tokens of a job.
pub const MAX_GROUP: usize = 64;
/// Most sequences in one batched step of a tensor-parallel stage ([`PipeMsg::Run`]) or one group of steps sent on
/// ([`PipeMsg::Group`]).
pub const MAX_BATCH_STEPS: usize = 64;
pub const MAX_STOP_TOKENS: usize = 64;
/// Longest error message.
pub const MAX_ERROR: usize = 4096;
/// Most alternatives reported with a token's log-probability (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most entries of a job's logit bias.
pub const MAX_LOGIT_BIAS: usize = 1024;
/// Largest grammar of a job (a JSON schema or a Lark grammar).
pub const MAX_GRAMMAR: usize = 256 << 10;
/// Most tokens in a [`Vocabulary`], and most bytes of all their texts together.
pub const MAX_VOCAB: usize = 1 << 20;
pub const MAX_VOCAB_BYTES: usize = 6 << 20;
/// Largest embedding (the model's width).
pub const MAX_EMBEDDING: usize = 1 << 16;

/// Names a plan (random, chosen by the coordinator).
pub type PlanId = [u8; 16];
/// blake3 hash.
pub type Hash = [u8; 32];

/// The first frame of a stage stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageOpen {
    /// Coordinator -> node: a session for this node's part of `plan`.
    Session { plan: PlanId },
    /// Node -> node: a pipe into this node's part of `plan`, from the stage member `from` (stage, member index).
    Pipe { plan: PlanId, from: MemberRef },
}

/// Largest [`StageOpen`] and [`StageAccept`] frame.
pub const MAX_OPEN_FRAME: usize = 1024;

/// The node's answer to a [`StageOpen`]: the stream is taken, or refused with the reason (no such plan here, a
/// peer outside the plan's wiring, too many streams from this peer). Nothing else is sent on a refused stream.
/// Its size is bounded by the frame limit, [`MAX_OPEN_FRAME`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageAccept {
    Accepted,
    Refused { reason: String },
}

/// A stage member within a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberRef {
    pub stage: u32,
    pub member: u32,
}

/// One tensor of a stage: what it is and the hash of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    /// GGML type id.
    pub ty: u32,
    /// Innermost first.
    pub dims: Vec<u64>,
    pub size: u64,
    pub hash: Hash,
}

/// Everything a node needs to hold its part of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// blake3 of the model file the stage is cut from.
    pub model: Hash,
    pub me: MemberRef,
    pub spec: ShardSpec,
    /// Set for a member of a tensor-parallel stage.
    pub slice: Option<LayerSlice>,
    /// The stage's metadata as a GGUF file without tensors.
    #[serde(with = "crate::wire::bytes")]
    pub metadata: Vec<u8>,
    pub tensors: Vec<TensorEntry>,
    /// Sequences the stage must be able to hold at once, each of `context` positions.
    pub sequences: u32,
    pub context: u32,
    /// The model's vocabulary, for a stage with the head: it samples, and a job's grammar is matched against the
    /// bytes of each token there (constrained decoding). None for other stages.
    pub vocab: Option<Vocabulary>,
}

/// Every token's bytes (a token's text as it decodes), for matching grammars on the stage that samples. The
/// tokenizer itself stays with the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocabulary {
    /// All tokens' bytes, one after the other.
    #[serde(with = "crate::wire::bytes")]
    pub bytes: Vec<u8>,
    /// Where each token's bytes end in `bytes` (token i is `bytes[ends[i-1]..ends[i]]`).
    pub ends: Vec<u32>,
    /// Control tokens (`<|im_end|>` and the like), which no grammar may spell as text.
    pub special: Vec<u32>,
    /// End-of-generation tokens: what a finished grammar allows.
    pub eog: Vec<u32>,
}

impl Vocabulary {
    pub fn from_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>, special: Vec<u32>, eog: Vec<u32>) -> Self {
        let (mut bytes, mut ends) = (Vec::new(), Vec::new());
        for p in pieces {
            bytes.extend_from_slice(p);
            ends.push(bytes.len() as u32);
        }
        Vocabulary { bytes, ends, special, eog }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Token `i`'s bytes (call [`Vocabulary::validate`] first).
    pub fn piece(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    pub fn validate(&self) -> Result<(), WireError> {
        check_len("vocabulary", self.ends.len(), MAX_VOCAB)?;
        check_len("vocabulary bytes", self.bytes.len(), MAX_VOCAB_BYTES)?;
        let n = self.ends.len() as u32;
        let ordered = self.ends.windows(2).all(|w| w[0] <= w[1]);
        if self.is_empty() || !ordered || self.ends[self.ends.len() - 1] as usize != self.bytes.len() {
            return Err(WireError::Invalid("vocabulary offsets do not cover its bytes in order".into()));
        }
        if self.eog.is_empty() || self.special.iter().chain(&self.eog).any(|&t| t >= n) {
            return Err(WireError::Invalid("vocabulary special or end tokens outside it (or none ends)".into()));
        }
        check_len("end-of-generation tokens", self.eog.len(), MAX_STOP_TOKENS)?;
        Ok(())
    }
}

/// A job's grammar: the output must be a sentence of it (constrained decoding on the stage that samples).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Grammar {
    /// A JSON schema, as JSON text (`{"type": "object"}` for any object).
    JsonSchema(String),
    /// A grammar in llguidance's Lark dialect (which can embed JSON schemas with `%json`).
    Lark(String),
}

impl Grammar {
    pub fn text(&self) -> &str {
        match self {
            Grammar::JsonSchema(s) | Grammar::Lark(s) => s,
        }
    }
}

impl Manifest {
    pub fn validate(&self) -> Result<(), WireError> {
        check_len("metadata", self.metadata.len(), MAX_METADATA)?;
        if let Some(v) = &self.vocab {
            v.validate()?;
        }
        check_len("tensor list", self.tensors.len(), MAX_TENSORS)?;
        for t in &self.tensors {
            check_str("tensor name", &t.name, MAX_TENSOR_NAME)?;
            check_len("tensor dims", t.dims.len(), 4)?;
        }
        if self.sequences == 0 || self.context == 0 {
            return Err(WireError::Invalid("a stage must hold at least one sequence of one position".into()));
        }
        Ok(())
    }

    /// Bytes of tensor data.
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.size).sum()
    }
}

/// Sampling parameters of a job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); higher values flatten the distribution.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = no limit).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 40, top_p: 0.95, seed: 0 }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Rejects values that have no meaning (negative temperature, top-p outside (0, 1]).
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!("temperature must be a finite number >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

/// What the last stage needs to know about a sequence to sample it and know when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobParams {
    /// Positions the sequence may hold (prompt + generated).
    pub capacity: u32,
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    /// Tokens that end generation (not emitted).
    pub stop: Vec<u32>,
    /// Random draws the sampler already made for this sequence: a sequence replayed on a new plan after a node
    /// loss continues the same random stream (0 for a new sequence).
    pub skip_draws: u32,
    /// Most prompt tokens in one step (chunked prefill): a longer prompt enters chunk by chunk, each chunk in the
    /// first stage's next batch with the other sequences' steps, so they wait about one chunk for their next
    /// token. 0: as few steps as the frame size allows.
    pub prefill_chunk: u32,
    /// Added to the logits before sampling, by token id (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    /// OpenAI's presence and frequency penalties, over the tokens this job generated.
    pub penalties: Penalties,
    /// Tokens the job already generated before this sequence started (a sequence resumed after a node loss): the
    /// penalties count them. Empty for a new sequence or when the penalties are zero.
    pub history: Vec<u32>,
    /// Report each token's log-probability with this many most likely alternatives (None: no log-probabilities).
    pub logprobs: Option<u8>,
    /// The grammar the output must follow (None: free text).
    pub grammar: Option<Grammar>,
    /// An embedding, not a generation: the last stage pools the prompt's final-normed hidden states (mean over
    /// the positions, then unit length) and answers [`NodeMsg::Embedding`] instead of sampling.
    pub embed: bool,
    /// The sequence's first positions are another's (the `n` choices of one request share one prefill): each
    /// stage copies them from that sequence's KV cache, and the job's first step carries the rest of the prompt.
    pub fork: Option<Fork>,
}

/// Start a sequence from the first `len` positions of the sequence `parent` (whose prompt begins with the same
/// `len` tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    pub parent: u64,
    pub len: u32,
}

/// OpenAI's repetition penalties: each logit is lowered by `presence` if its token was generated before and by
/// `frequency` times the number of times it was.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Penalties {
    pub presence: f32,
    pub frequency: f32,
}

impl Penalties {
    pub fn is_none(&self) -> bool {
        self.presence == 0.0 && self.frequency == 0.0
    }
}

impl JobParams {
    /// Greedy, no stop tokens, a new sequence, the node's prompt chunking.
    pub fn new(capacity: u32, max_tokens: u32) -> JobParams {
        JobParams {
            capacity,
            max_tokens,
            sampling: SamplingParams::default(),
            stop: vec![],
            skip_draws: 0,
            prefill_chunk: 0,
            logit_bias: vec![],
            penalties: Penalties::default(),
            history: vec![],
            logprobs: None,
            grammar: None,
            embed: false,
            fork: None,
        }
    }

    /// Whether a resumed sequence needs the tokens generated before (penalties count them, a grammar has
    /// matched them).
    pub fn keeps_history(&self) -> bool {
        !self.penalties.is_none() || self.grammar.is_some()
    }

    /// Whether sampling needs the logits (not just the most likely token).
    pub fn needs_logits(&self) -> bool {
        !self.sampling.is_greedy()
            || !self.logit_bias.is_empty()
            || !self.penalties.is_none()
            || self.logprobs.is_some()
            || self.grammar.is_some()
    }

    pub fn validate(&self) -> Result<(), WireError> {
        check_len("stop tokens", self.stop.len(), MAX_STOP_TOKENS)?;
        check_len("logit bias", self.logit_bias.len(), MAX_LOGIT_BIAS)?;
        check_len("history", self.history.len(), MAX_TOKENS)?;
        check_len("grammar", self.grammar.as_ref().map_or(0, |g| g.text().len()), MAX_GRAMMAR)?;
        check_len("top log-probabilities", self.logprobs.unwrap_or(0) as usize, MAX_TOP_LOGPROBS)?;
        let finite = |x: f32| x.is_finite();
        if !self.logit_bias.iter().all(|b| finite(b.1))
            || !finite(self.penalties.presence)
            || !finite(self.penalties.frequency)
        {
            return Err(WireError::Invalid("a logit bias or penalty is not a finite number".into()));
        }
        self.sampling.validate().map_err(WireError::Invalid)?;
        if self.capacity == 0 {
            return Err(WireError::Invalid("capacity 0".into()));
        }
        if self.fork.is_some_and(|f| f.len == 0 || f.len >= self.capacity) {
            return Err(WireError::Invalid("a fork of no positions, or of more than the sequence holds".into()));
        }
        Ok(())
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Finish {
    /// A stop token (not emitted).
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The sequence's context is full.
    Context,
    /// The coordinator cancelled it.
    Cancelled,
}

/// Coordinator -> node, on a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SessionMsg {
    /// Hold this stage. The node answers [`NodeMsg::Need`].
    Load(Manifest),
    /// Bytes `offset..offset + data.len()` of tensor `tensor` (an index into the manifest's list).
    Data {
        tensor: u32,
        offset: u64,
        #[serde(with = "crate::wire::bytes")]
        data: Vec<u8>,
    },
    /// Open pipes: to `next` (the leader of the next stage; for the last stage, the first stage's leader: the
    /// ring that carries sampled tokens back), and within a tensor-parallel stage to every other member of
    /// `group` (peer ids in member order; one entry for a plain stage). `upstream` is the leader that sends
    /// into this stage (the previous stage's; the last stage's for the first); pipes from anyone else are
    /// refused. `batched`: every member of the group said it batches ([`NodeMsg::Loaded`]), so the leader runs the
    /// waiting steps of several sequences as one step and tells the others which with [`PipeMsg::Run`]. `batch`:
    /// the most sequences that move through the pipeline as one group, as planned (0: no limit). Answered with
    /// [`NodeMsg::Wired`].
    Wire { next: Option<String>, upstream: Option<String>, group: Vec<String>, batched: bool, batch: u32 },
    /// Start a sequence (to the first stage's leader): prefill `prompt`, then generate.
    Start { seq: u64, prompt: Vec<u32>, params: JobParams },
    /// Stop a sequence early (to the first stage's leader).
    Cancel { seq: u64 },
}

impl SessionMsg {
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            SessionMsg::Load(m) => m.validate(),
            SessionMsg::Data { data, .. } => check_len("data chunk", data.len(), MAX_DATA_CHUNK),
            SessionMsg::Wire { next, upstream, group, batch, .. } => {
                check_len("group", group.len(), MAX_GROUP)?;
                check_len("batch", *batch as usize, MAX_BATCH_STEPS)?;
                next.iter().chain(upstream).chain(group).try_for_each(|p| check_str("peer id", p, 128))
            }
            SessionMsg::Start { prompt, params, .. } => {
                check_len("prompt", prompt.len(), MAX_TOKENS)?;
                if prompt.is_empty() {
                    return Err(WireError::Invalid("empty prompt".into()));
                }
                params.validate()
            }
            SessionMsg::Cancel { .. } => Ok(()),
        }
    }
}

/// Node -> coordinator, on a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeMsg {
    /// The tensors still missing, each with the bytes already held (resume from there). Empty: all cached.
    Need { tensors: Vec<(u32, u64)> },
    /// The stage is loaded and ready to be wired; `batches`: its backend runs the steps of several sequences as
    /// one step (one read of the weights for all of them).
    Loaded { backend: String, load_ms: u32, received_bytes: u64, batches: bool },
    /// Pipes are open.
    Wired,
    /// From the last stage's leader: the `index`-th generated token of `seq` (None when the sequence ended on a
    /// stop token), whether the sequence ended, and the token's log-probability when the job asked for it.
    Token { seq: u64, index: u32, token: Option<u32>, finish: Option<Finish>, logprobs: Option<TokenLogprobs> },
    /// From the last stage's leader: the embedding of an `embed` job's prompt (it ends the sequence).
    Embedding { seq: u64, vector: Vec<f32> },
    /// From every stage's leader when a sequence closes: how long the stage computed for it, and how many of its
    /// positions it copied from another sequence ([`JobParams::fork`]) instead of computing them.
    SeqStats { seq: u64, steps: u32, compute_us: u64, prefill_us: u64, forked: u32 },
    /// The stage (seq None) or one sequence failed.
    Error { seq: Option<u64>, message: String },
}

impl NodeMsg {
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            NodeMsg::Need { tensors } => check_len("need list", tensors.len(), MAX_TENSORS),
            NodeMsg::Loaded { backend, .. } => check_str("backend", backend, 256),
            NodeMsg::Error { message, .. } => check_str("error", message, MAX_ERROR),
            NodeMsg::Token { logprobs: Some(l), .. } => {
                check_len("top log-probabilities", l.top.len(), MAX_TOP_LOGPROBS)
            }
            NodeMsg::Embedding { vector, .. } => check_len("embedding", vector.len(), MAX_EMBEDDING),
            NodeMsg::Wired | NodeMsg::Token { .. } | NodeMsg::SeqStats { .. } => Ok(()),
        }
    }
}

/// A sampled token's log-probability under the model (the log-softmax of the raw logits, before bias, penalties
/// and temperature, as vLLM reports it) and the most likely tokens with theirs, most likely first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What a step carries into a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StepInput {
    Tokens(Vec<u32>),
    /// `(n_tokens, dim)` hidden states.
    Hidden(Vec<f32>),
}

/// Node -> node, on a pipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PipeMsg {
    /// The next positions of `seq`. `job` rides along with a sequence's first step (each stage opens the
    /// sequence then); `sample` marks the step after which the last stage samples a token (the last chunk of a
    /// prompt, and every decode step).
    Step { seq: u64, job: Option<JobParams>, input: StepInput, sample: bool },
    /// Free `seq` (travels the pipeline from the first stage to the last).
    Close { seq: u64 },
    /// A tensor-parallel member's partial sums for the current block of the current step.
    Partial { seq: u64, data: Vec<f32> },
    /// From the leader of a batched tensor-parallel stage to the other members: run the steps of `seqs` (forwarded
    /// before, in this order) now, as one batch when there are several.
    Run { seqs: Vec<u64> },
    /// From a stage's leader to the next stage: the next `count` steps it sends ran here as one batch. The next
    /// stage waits for all of them and runs them together, so a batch stays whole down the pipeline (and around
    /// the ring) instead of splitting by the moment each of its steps happened to arrive.
    Group { count: u32 },
}

impl PipeMsg {
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            PipeMsg::Step { job, input, .. } => {
                if let Some(j) = job {
                    j.validate()?;
                }
                match input {
                    StepInput::Tokens(t) if t.is_empty() => Err(WireError::Invalid("empty step".into())),
                    StepInput::Hidden(h) if h.is_empty() => Err(WireError::Invalid("empty step".into())),
                    _ => Ok(()),
                }
            }
            PipeMsg::Run { seqs } => {
                check_len("batch", seqs.len(), MAX_BATCH_STEPS)?;
                match seqs.is_empty() {
                    true => Err(WireError::Invalid("empty batch".into())),
                    false => Ok(()),
                }
            }
            PipeMsg::Group { count } => {
                check_len("group", *count as usize, MAX_BATCH_STEPS)?;
                match count {
                    0 => Err(WireError::Invalid("empty group".into())),
                    _ => Ok(()),
                }
            }
            PipeMsg::Close { .. } | PipeMsg::Partial { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let params = JobParams { stop: vec![2], ..JobParams::new(8, 4) };
        assert!(params.validate().is_ok());
        assert!(JobParams { stop: vec![0; MAX_STOP_TOKENS + 1], ..params.clone() }.validate().is_err());
        let bad_sampling = SamplingParams { top_p: 0.0, ..SamplingParams::default() };
        assert!(JobParams { sampling: bad_sampling, ..params.clone() }.validate().is_err());
        assert!(JobParams { logprobs: Some(20), ..params.clone() }.validate().is_ok());
        assert!(JobParams { logprobs: Some(21), ..params.clone() }.validate().is_err());
        assert!(JobParams { fork: Some(Fork { parent: 1, len: 7 }), ..params.clone() }.validate().is_ok());
        assert!(JobParams { fork: Some(Fork { parent: 1, len: 8 }), ..params.clone() }.validate().is_err());
        assert!(JobParams { fork: Some(Fork { parent: 1, len: 0 }), ..params.clone() }.validate().is_err());
        assert!(JobParams { logit_bias: vec![(1, 0.5); MAX_LOGIT_BIAS + 1], ..params.clone() }.validate().is_err());
        assert!(JobParams { logit_bias: vec![(1, f32::INFINITY)], ..params.clone() }.validate().is_err());
        let nan = Penalties { presence: f32::NAN, frequency: 0.0 };
        assert!(JobParams { penalties: nan, ..params.clone() }.validate().is_err());
        let token = |n| NodeMsg::Token {
            seq: 1,
            index: 0,
            token: Some(3),
            finish: None,
            logprobs: Some(TokenLogprobs { logprob: -0.5, top: vec![(3, -0.5); n] }),
        };
        assert!(token(MAX_TOP_LOGPROBS).validate().is_ok());
        assert!(token(MAX_TOP_LOGPROBS + 1).validate().is_err());
        let embedding = |n| NodeMsg::Embedding { seq: 1, vector: vec![0.5; n] };
        assert!(embedding(MAX_EMBEDDING).validate().is_ok());
        assert!(embedding(MAX_EMBEDDING + 1).validate().is_err());
        assert!(SessionMsg::Start { seq: 1, prompt: vec![], params: params.clone() }.validate().is_err());
        assert!(SessionMsg::Data { tensor: 0, offset: 0, data: vec![0; MAX_DATA_CHUNK + 1] }.validate().is_err());
        let step = |input| PipeMsg::Step { seq: 1, job: None, input, sample: true };
        assert!(step(StepInput::Tokens(vec![])).validate().is_err());
        assert!(step(StepInput::Hidden(vec![0.0; 4])).validate().is_ok());
        let wire = |group: usize, batch: usize| SessionMsg::Wire {
            next: None,
            upstream: None,
            group: vec!["p".into(); group],
            batched: true,
            batch: batch as u32,
        };
        assert!(wire(MAX_GROUP, MAX_BATCH_STEPS).validate().is_ok());
        assert!(wire(MAX_GROUP + 1, 8).validate().is_err());
        assert!(wire(2, MAX_BATCH_STEPS + 1).validate().is_err());
        assert!(PipeMsg::Run { seqs: vec![1; MAX_BATCH_STEPS] }.validate().is_ok());
        assert!(PipeMsg::Run { seqs: vec![1; MAX_BATCH_STEPS + 1] }.validate().is_err());
        assert!(PipeMsg::Run { seqs: vec![] }.validate().is_err());
        assert!(PipeMsg::Group { count: MAX_BATCH_STEPS as u32 }.validate().is_ok());
        assert!(PipeMsg::Group { count: MAX_BATCH_STEPS as u32 + 1 }.validate().is_err());
        assert!(PipeMsg::Group { count: 0 }.validate().is_err());
        let grammar = |n| JobParams { grammar: Some(Grammar::Lark("x".repeat(n))), ..params.clone() };
        assert!(grammar(MAX_GRAMMAR).validate().is_ok());
        assert!(grammar(MAX_GRAMMAR + 1).validate().is_err());
    }

    #[test]
    fn a_vocabulary_is_checked_before_use() {
        let v = Vocabulary::from_pieces([&b"a"[..], b"", b"<|end|>", b" bc"], vec![2], vec![2]);
        assert!(v.validate().is_ok());
        assert_eq!((v.len(), v.piece(0), v.piece(1), v.piece(3)), (4, &b"a"[..], &b""[..], &b" bc"[..]));
        let broken = [
            Vocabulary { ends: vec![1, 0, 8, 11], ..v.clone() },
            Vocabulary { ends: vec![1, 1, 8, 12], ..v.clone() },
            Vocabulary { eog: vec![], ..v.clone() },
            Vocabulary { eog: vec![4], ..v.clone() },
            Vocabulary { special: vec![9], ..v.clone() },
            Vocabulary::from_pieces([], vec![], vec![0]),
        ];
        for b in broken {
            assert!(b.validate().is_err(), "{b:?}");
        }
    }

    #[test]
    fn messages_round_trip() {
        let m = PipeMsg::Step {
            seq: 7,
            job: Some(JobParams { prefill_chunk: 16, ..JobParams::new(8, 4) }),
            input: StepInput::Hidden(vec![1.5, -2.0]),
            sample: false,
        };
        let bytes = crate::encode(&m, MAX_STAGE_FRAME).unwrap();
        assert_eq!(crate::decode::<PipeMsg>(&bytes, MAX_STAGE_FRAME).unwrap(), m);
        let open = StageOpen::Pipe { plan: [3; 16], from: MemberRef { stage: 1, member: 0 } };
        let bytes = crate::encode(&open, 256).unwrap();
        assert_eq!(crate::decode::<StageOpen>(&bytes, 256).unwrap(), open);
    }
}
