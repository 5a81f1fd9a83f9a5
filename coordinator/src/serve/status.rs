//! The JSON of `GET /api/status`: what the dashboard page and `edge-coord status` show. This file is the contract;
//! every field is always present (`null` where the type says `Option`).
//!
//! ```text
//! {"model":{"id":str,"arch":str,"layers":int,"context":int},
//!  "nodes":[{"id":str,"name":str,"adapter":str,"backend":str,"memory_bytes":int,"gemv_gbps":float,
//!            "row_gmacs":float,"rtt_ms":float|null,"bandwidth_mbps":float|null,"alive":bool,"active_sequences":int,"tokens_per_s":float}],
//!  "plan":{"id":str,"stages":[{"layers":[start,end),"embed":bool,"head":bool,
//!            "members":[{"node":str,"kv_heads":[a,b)|null,"q_heads":[a,b)|null,"ffn":[a,b)|null}],"predicted_us":float}],
//!          "predicted_tokens_per_s":float,"sequences":int} | null,
//!  "replicas":[{"plan":{...as "plan"...}|null,"running":int,"queued":int,"unavailable":str|null}],
//!  "jobs":[{"id":str,"kind":"completion"|"chat"|"embedding","state":"queued"|"running"|"done"|"failed"|"cancelled",
//!           "prompt_tokens":int,"completion_tokens":int,"tokens_per_s":float|null,"first_token_ms":float|null,
//!           "created":int,"replica":int,"finish_reason":str|null,"error":str|null}],
//!  "totals":{"requests":int,"completion_tokens":int,"uptime_s":float}}
//! ```

use serde::{Deserialize, Serialize};

/// The whole status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub model: ModelInfo,
    /// Every member seen when the cluster was last planned on, plus the ones of the current plan.
    pub nodes: Vec<NodeStatus>,
    /// The first replica's plan running now; `null` while no replica runs one (no plan fits the members alive).
    pub plan: Option<PlanStatus>,
    /// Every replica of the model, by index (requests go to the one that will finish them soonest).
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
    /// Most recent first, at most [`MAX_JOBS`].
    pub jobs: Vec<JobStatus>,
    pub totals: Totals,
}

/// Jobs kept in the status.
pub const MAX_JOBS: usize = 50;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model name the API answers to (the GGUF file stem, e.g. `SmolLM2-135M-Instruct.Q4_1`).
    pub id: String,
    /// `general.architecture`, e.g. `llama`.
    pub arch: String,
    pub layers: usize,
    /// Positions each sequence may hold (`--ctx`).
    pub context: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// libp2p peer id.
    pub id: String,
    /// Short display name: the last 6 characters of the peer id.
    pub name: String,
    /// GPU adapter, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub adapter: String,
    /// `wgpu` or `cpu`.
    pub backend: String,
    /// Memory the node offers for weights and KV cache.
    pub memory_bytes: u64,
    /// Measured quantized-GEMV bandwidth, GB/s.
    pub gemv_gbps: f64,
    /// Measured G multiply-adds/s of each row after the first in a batched step (0: batches run row by row).
    #[serde(default)]
    pub row_gmacs: f64,
    /// Ping round trip from the coordinator (live), ms.
    pub rtt_ms: Option<f64>,
    /// Link bandwidth measured when the cluster was planned, MB/s.
    pub bandwidth_mbps: Option<f64>,
    /// In the coordinator's live view of the cluster now.
    pub alive: bool,
    /// Sequences running on the plan if the node is part of it, else 0.
    pub active_sequences: usize,
    /// Tokens (prompt and generated) its stage processed per second over the last ~10 s.
    pub tokens_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanStatus {
    /// Hex plan id (as the nodes log it).
    pub id: String,
    /// In pipeline order.
    pub stages: Vec<StageStatus>,
    /// The planner's predicted decode throughput of `sequences` concurrent sequences (tokens/s, all together).
    pub predicted_tokens_per_s: f64,
    /// Sequences the plan holds at once (`--sequences`).
    pub sequences: usize,
}

/// One copy of the model on its own nodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Its plan; `null` while it re-plans or while no plan of it fits.
    pub plan: Option<PlanStatus>,
    /// Sequences running on it.
    pub running: usize,
    /// Requests waiting for one of its sequence slots.
    pub queued: usize,
    /// Why it takes no requests (no plan of it fits the nodes left to it); `null` while it serves or re-plans.
    pub unavailable: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageStatus {
    /// Layers `[start, end)`.
    pub layers: (u32, u32),
    /// Holds the token embedding (first stage).
    pub embed: bool,
    /// Holds the output head (last stage).
    pub head: bool,
    /// One member, or a tensor-parallel group in member order.
    pub members: Vec<StageMemberStatus>,
    /// Predicted compute time of one decode step, us.
    pub predicted_us: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageMemberStatus {
    /// Peer id (an `id` of `nodes`).
    pub node: String,
    /// Key/value heads `[a, b)` of a tensor-parallel member; `null` for whole layers.
    pub kv_heads: Option<(u32, u32)>,
    /// Query heads `[a, b)` of a member that splits the query heads of a model with one key/value head (which it
    /// holds whole); `null` otherwise.
    #[serde(default)]
    pub q_heads: Option<(u32, u32)>,
    /// FFN columns `[a, b)` of a tensor-parallel member; `null` for whole layers.
    pub ffn: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    /// The response id (`cmpl-…` or `chatcmpl-…`).
    pub id: String,
    pub kind: JobKind,
    pub state: JobState,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Decode speed (tokens after the first over the time since the first), once there are two tokens.
    pub tokens_per_s: Option<f64>,
    /// From the request's arrival to its first token (queueing included), ms.
    pub first_token_ms: Option<f64>,
    /// Arrival, unix seconds.
    pub created: u64,
    /// The replica that runs (or ran) it.
    #[serde(default)]
    pub replica: usize,
    /// OpenAI's: `stop` or `length` once done.
    pub finish_reason: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Completion,
    Chat,
    Embedding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    /// The client went away before the end.
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Totals {
    /// Completion requests accepted since the server started.
    pub requests: u64,
    /// Tokens generated since the server started.
    pub completion_tokens: u64,
    pub uptime_s: f64,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Completion => "completion",
            JobKind::Chat => "chat",
            JobKind::Embedding => "embedding",
        }
    }
}
