//! The planner: which nodes run which layers of a model, and what that is predicted to cost. Sans I/O: it takes a
//! [`ModelDescription`], [`NodeProfile`]s and a [`PlanRequest`] and returns a [`Plan`]; `edge-coord plan`, the
//! runtime (measured vs predicted) and the cluster simulator all call [`plan`] and [`predict`].
//!
//! # Cost model
//!
//! All times are microseconds of one decode step (one token of one sequence); bytes over GB/s are weights
//! streamed by a quantized GEMV, whose speed each node measures (`gemv_gbps`), as it measures the cost of one
//! kernel dispatch (`dispatch_us`). The constants live in [`cost`].
//!
//! **Links.** Star topology: every node hangs off one switch by its own link. A hop `a -> b` costs
//! `lat_a + lat_b + bytes/bw_a + bytes/bw_b` (store and forward through the switch), where `lat` is the node's
//! one-way latency to the switch (`link.latency_us`; the CLI uses half the ping round trip to the coordinator),
//! `bw` its bandwidth (`link.bandwidth_mbps`, MB/s, so `bytes / bw` is in us) and `bytes` the hidden state of the
//! tokens in flight (`activation_bytes_per_token x DECODE_TOKENS`, decode: one token). A pipeline of two or more
//! stages is a ring (the last stage sends the sampled token back to the first), so every stage has exactly one
//! incoming and one outgoing hop and the sum of the hops is `sum over stages of 2 x link(stage)` with
//! `link(n) = lat_n + bytes/bw_n`: the order of the nodes does not change the prediction. A single stage has no
//! hops. Hops to and from a tensor-parallel stage go to its leader (member 0): its link term is the leader's.
//!
//! **Stage time** on node `n` for whole layers `[a, b)`:
//! `(sum(layer_weight_bytes[a..b]) + kv_bytes_per_token_per_layer x (b-a) x context/2) / (gemv_gbps x 1e3)`
//! (weights and the KV cache of one sequence, half full on average; a sliding-window layer reads at most its
//! window, taken into the mean over the layers) `+ DISPATCHES_PER_LAYER (6) x (b-a) x
//! dispatch_us` `+ EMBED_DISPATCHES (1) x dispatch_us` on the first stage `+ head_bytes / (gemv_gbps x 1e3) +
//! HEAD_DISPATCHES (2) x dispatch_us` on the last `+ STEP_OVERHEAD_US` (100: one submit and one readback).
//! The byte counts are a wgpu node's (matrices as it holds them, an f32 cache); a node that reads the file's own
//! blocks and an f16 cache (the cpu backend, [`NodeProfile::native_weights`]) reads each of those terms at its
//! own rate instead of `gemv_gbps` ([`NodeProfile::weight_gbps`], `head_gbps`, `kv_gbps`): the file's bytes of
//! the layers and the head, half the cache's.
//!
//! **Stage memory**: the layers' weights (+ `embed_bytes` on the first stage, + `head_bytes` on the last; a tied
//! head is a second copy) + KV cache `kv_bytes_per_token_per_layer x positions x sequences` summed over the layers,
//! positions being `context`, or on a sliding-window layer `min(context, window - 1 + 256)` (what the
//! cpu backend holds, `edge_node::cpu::kv::rows`; the DP checks the most any run of that many layers holds) + workspace
//! `MAX_STEP_TOKENS (256) x (2 dim + (q + 2 kv) + q + q + ffn) x 4` (+ `HEAD_ROWS (32) x vocab x 4` of logits on
//! the last stage). It must be at most `USABLE_MEMORY_FRACTION (0.9) x memory_bytes` of the node (members report
//! the memory available when they start).
//!
//! **Tensor-parallel stage** over a group of `k` nodes: each member holds a contiguous range of whole KV heads
//! (with the `n_heads / n_kv_heads` query heads of each) and a contiguous range of FFN columns in blocks of
//! `ffn_block`, at least one of each, sized by speed: heads one by one to the member with the fewest heads per
//! GB/s, then FFN blocks one by one to the member whose layer time stays lowest (uneven splits allowed). A member
//! reads `attention_fraction x heads/n_kv_heads + (1 - attention_fraction) x columns/ffn_dim` of each layer's bytes
//! (fractions by parameter count) and `heads/n_kv_heads` of the KV cache. A model with a single KV head (gemma3)
//! deals out its query heads instead ([`cost::tp_units`]): every member holds the KV head whole (all of Wk, Wv
//! and the KV cache) and its query heads' rows of Wq and columns of Wo. Per layer: the slowest member's
//! (weights + KV)/(gbps x 1e3) + 6 dispatches, plus two all-reduces, each `max over members (2 lat + dim x 4 x
//! tokens x (k-1) / bw)`, plus `TP_SYNC_US` (150) per half-layer. Once per step the leader forwards the stage
//! input (token ids on the first stage, else the hidden state) to the other members: `max over members (lat_0 +
//! lat_i + bytes x (k-1) / bw_0 + bytes / bw_i)`. Embedding and head are replicated on every member of a stage
//! that has them, and every member runs them (time: the slowest member's; memory: on every member). Member
//! memory: its share of the weights and KV cache, the replicated embedding/head and a full workspace. Members
//! are in node-index order; the first holds the first heads and columns and leads.
//!
//! **Prediction**: `token_latency_us = sum of stage times + sum of hops` (one sequence), `tokens_per_s = 1e6 /
//! token_latency_us`. Each stage of a pipeline is busy per token for its *occupancy*: its time plus the time its
//! own link carries the hidden state in and out (`stage + 2 x bytes/bw`; a single stage: its time). A hop's
//! latency adds to a token's time but keeps no stage busy: while a hidden state is in flight the stage runs other
//! sequences' steps (the `sequences / latency` bound below covers the latency). (Charging each stage its whole
//! outgoing hop instead of its own link's halves would make the bottleneck depend on which node follows which,
//! and the search below inexact.)
//!
//! **Batches.** A stage runs the waiting steps of different sequences as one step of several rows. With
//! `sequences` concurrent sequences moving as `m` groups of up to `b` (a *batch*, `m = ceil(sequences / b)`), a
//! step of `b` rows on a node that measured a batched rate (`row_gmacs`, G multiply-adds/s of each row after the
//! first) takes the one-row time plus, for each further row, its multiply-adds (`flops_per_token_per_layer / 2`
//! per layer, `dim x vocab` for the head) at `row_gmacs` and its own KV read at `gemv_gbps`: the weights are read
//! once. Its link carries the `b` hidden states after one latency. A tensor-parallel stage whose members all
//! measured a batched rate batches the same way, each member adding its share of a row's multiply-adds and KV
//! read per further row, and every all-reduce and the leader's broadcast carrying the `b` rows after one latency.
//! A node without a batched rate (`row_gmacs = 0`, the f32 reference backend), and a group with such a member,
//! take `b` times the one-row step; their links carry the `b` hidden states one after another after one latency.
//! With the batch's latency `L_b` (sum of stage times and hops at `b`) and bottleneck `B_b`, one round moves
//! every group once and lasts `max(L_b, m x B_b)` (`B_b` is also at least the busiest host's stage times added up,
//! for stages whose members share a machine, [`NodeProfile::host`]): `throughput_tokens_per_s = max over b of
//! sequences x 1e6 / max(L_b, m x B_b)` for `b` in 1, 2, 4, ... and `sequences` ([`batches`]); `b = 1` gives
//! `min(sequences x 1e6 / token_latency_us, 1e6 / bottleneck_us)`, every token stepping alone. The prediction
//! reports the best `b` (`batch`), `m` (`micro_batches`), `L_b` and `B_b`.
//!
//! # Search ([`pipeline`])
//!
//! The objective is the token latency for one sequence and the throughput for several (ties: fewer nodes, then
//! less memory, then lower node indices). For several, the search below runs once per batch size `b` with the
//! times at `b` and `m` groups in place of the sequences (a round's `max(L_b, m x B_b)` is `m` times the one-row
//! objective's `max(L / m, B)`), and the best plan over all of them wins. Since hops decompose into per-node terms, a stage's occupancy depends
//! only on its node, its number of layers and its role (first: embedding, last: head, or in between). A dynamic
//! program over the nodes (each used at most once) and the number of layers covered, with two flags (first and
//! last stage placed), finds the plan of least latency among plans whose occupancies are all at most a cap, in
//! `O(nodes x layers)` (sliding-window minima: a stage's time is linear in its layer count). For throughput the
//! optimum is found by a binary search over the caps (the distinct occupancies): the latency at a cap falls as
//! the cap rises, and the best plan sits at the crossing `latency / sequences = cap`, or just below it. Single
//! stages (no hops) are compared separately. Nodes with identical profiles form a class of which at most
//! `n_layers` are considered, and a node that `n_layers` others match or beat in every cost the search sees is
//! dropped (a pipeline has at most `n_layers` stages, so one of them is free to take its place). The search is
//! exact when all layers have the same size (the usual case); with mixed layer sizes it uses the mean layer for time and the largest window of layers for memory (plans always fit).
//! `TpMode::Auto` also tries a tensor-parallel group of the `k` fastest nodes (`k = 2..=min(8, units, n)`, units
//! the KV heads, or the query heads of a model with one KV head)
//! as one more unit of the same search and keeps it when it predicts better.

pub mod cost;
mod describe;
pub mod pipeline;
pub mod repair;
pub mod replicas;

use std::collections::HashMap;

use edge_protocol::{LayerSlice, ShardSpec};
use serde::{Deserialize, Serialize};

use crate::ModelDescription;
use cost::{usable_memory, CostModel, TpGroup, TpShare};
pub use edge_node::stage::worker::MAX_BATCH;

/// GEMV bandwidth assumed for a member that did not measure one (GB/s).
pub const DEFAULT_GEMV_GBPS: f64 = 1.0;
/// One-way link latency assumed when the round trip to a member is unknown (us).
pub const DEFAULT_LATENCY_US: f64 = 500.0;
/// Link bandwidth assumed when it was not measured (MB/s).
pub const DEFAULT_BANDWIDTH_MBPS: f64 = 100.0;

/// A node as the planner sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeProfile {
    pub id: String,
    /// Memory the node reported as available (the planner uses `USABLE_MEMORY_FRACTION` of it).
    pub memory_bytes: u64,
    /// Measured bandwidth of a quantized GEMV (weights streamed per token), GB/s.
    pub gemv_gbps: f64,
    /// Cost of one kernel dispatch, us.
    pub dispatch_us: f64,
    /// Multiply-adds per second (G MAC/s) each row after the first adds to a batched step (several sequences'
    /// tokens sharing one read of the weights); 0: the node runs a batch's rows one after another.
    #[serde(default)]
    pub row_gmacs: f64,
    /// The node reads the weights in the file's own blocks and holds an f16 KV cache (the cpu backend), where the
    /// model description counts a wgpu node's bytes: it reads them at [`NodeProfile::weight_gbps`],
    /// [`NodeProfile::head_gbps`] and [`NodeProfile::kv_gbps`]. False in a `--nodes` file that leaves it out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub native_weights: bool,
    pub link: LinkProfile,
    /// The machine the node runs on, as far as the coordinator can tell (the IP address it reaches the node at):
    /// stages on one host share its compute, so a round of batches lasts at least their busy times added up.
    /// None: a machine of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A node's link to the switch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkProfile {
    /// One-way latency node <-> switch, us.
    pub latency_us: f64,
    /// MB/s (so bytes / bandwidth_mbps is in us).
    pub bandwidth_mbps: f64,
}

impl NodeProfile {
    /// GB/s at which this node reads the layer weight bytes `model` counts (a wgpu node's): its GEMV bandwidth,
    /// over [`ModelDescription::native_layer_ratio`] when it reads the file's own blocks
    /// ([`NodeProfile::native_weights`]).
    pub fn weight_gbps(&self, model: &ModelDescription) -> f64 {
        self.gemv_gbps / if self.native_weights { model.native_layer_ratio() } else { 1.0 }
    }

    /// The same for the head's bytes ([`ModelDescription::native_head_ratio`]).
    pub fn head_gbps(&self, model: &ModelDescription) -> f64 {
        self.gemv_gbps / if self.native_weights { model.native_head_ratio() } else { 1.0 }
    }

    /// GB/s at which this node reads the KV cache bytes a model description counts (f32): twice its GEMV
    /// bandwidth when it holds an f16 cache ([`NodeProfile::native_weights`]).
    pub fn kv_gbps(&self) -> f64 {
        self.gemv_gbps * if self.native_weights { 2.0 } else { 1.0 }
    }

    /// The planner's view of a discovered member: memory, GEMV bandwidth and dispatch cost from its capability
    /// record, latency half the ping round trip, bandwidth as measured (defaults when unknown:
    /// [`DEFAULT_GEMV_GBPS`], [`DEFAULT_LATENCY_US`], [`DEFAULT_BANDWIDTH_MBPS`]). `None` without a capability
    /// record (the peer runs no shards).
    pub fn from_member(m: &crate::cluster::Member) -> Option<NodeProfile> {
        let c = m.peer.capabilities.as_ref()?;
        let gemv = c.gemv_gbps as f64;
        let dispatch = c.dispatch_us as f64;
        let row = c.row_gmacs as f64;
        Some(NodeProfile {
            id: m.peer.peer_id.clone(),
            memory_bytes: c.memory_bytes,
            gemv_gbps: if gemv.is_finite() && gemv > 0.0 { gemv } else { DEFAULT_GEMV_GBPS },
            dispatch_us: if dispatch.is_finite() && dispatch >= 0.0 { dispatch } else { 0.0 },
            row_gmacs: if row.is_finite() && row >= 0.0 { row } else { 0.0 },
            native_weights: c.backend == "cpu",
            link: LinkProfile {
                latency_us: m.peer.rtt_us.map_or(DEFAULT_LATENCY_US, |r| r as f64 / 2.0),
                bandwidth_mbps: m
                    .bandwidth_mbps
                    .filter(|b| b.is_finite() && *b > 0.0)
                    .unwrap_or(DEFAULT_BANDWIDTH_MBPS),
            },
            host: m.peer.via.iter().chain(&m.peer.addrs).find_map(|a| host_of(a)),
        })
    }
}

/// The host part of a multiaddr (`/ip4/10.0.0.7` of `/ip4/10.0.0.7/tcp/4001/p2p/...`); None for an address
/// without one.
pub fn host_of(addr: &str) -> Option<String> {
    let mut parts = addr.split('/').skip(1);
    match (parts.next()?, parts.next()?) {
        (kind @ ("ip4" | "ip6" | "dns" | "dns4" | "dns6"), host) if !host.is_empty() => Some(format!("/{kind}/{host}")),
        _ => None,
    }
}

/// What to plan for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// Positions each sequence may hold (1..=the model's context).
    pub context: usize,
    /// Concurrent sequences (at least 1): one optimizes latency, more optimize throughput.
    pub sequences: usize,
    pub tensor_parallel: TpMode,
}

/// Whether stages may be split tensor-parallel over several nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TpMode {
    /// Try tensor-parallel groups of the fastest nodes; keep one when it predicts better.
    Auto,
    /// Pipeline stages of whole layers only.
    Off,
    /// The whole model as one stage split tensor-parallel over the `k` fastest nodes.
    Force(usize),
}

impl std::str::FromStr for TpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<TpMode, String> {
        match s {
            "auto" => Ok(TpMode::Auto),
            "off" => Ok(TpMode::Off),
            k => k.parse().map(TpMode::Force).map_err(|_| format!("{k:?} is not auto, off or a number of nodes")),
        }
    }
}

impl std::fmt::Display for TpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TpMode::Auto => write!(f, "auto"),
            TpMode::Off => write!(f, "off"),
            TpMode::Force(k) => write!(f, "{k}"),
        }
    }
}

/// Where every layer runs, and the prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// In pipeline order: stage `i` covers the layers right after stage `i - 1`'s.
    pub stages: Vec<Stage>,
    pub prediction: Prediction,
}

/// A contiguous range of layers run by one node, or by a tensor-parallel group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub layer_start: u32,
    pub layer_end: u32,
    pub embed: bool,
    pub head: bool,
    /// One member for a pipeline stage; a tensor-parallel group in member order otherwise.
    pub members: Vec<StageMember>,
    /// Predicted compute time of one decode step (us).
    pub compute_us: f64,
}

/// A node's part of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageMember {
    /// Index into the nodes given to [`plan`].
    pub node: usize,
    /// Key/value heads `[start, end)`: `(0, n_kv_heads)` for whole layers.
    pub kv_heads: (u32, u32),
    /// FFN columns `[start, end)`: `(0, ffn_dim)` for whole layers.
    pub ffn: (u32, u32),
    /// Query heads `[start, end)` inside the one key/value head, for a model that has only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q_heads: Option<(u32, u32)>,
    /// Memory the member needs for its part (weights, KV cache, workspace).
    pub memory_bytes: u64,
}

/// What the cost model predicts for a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// One token of one sequence through every stage and hop (us).
    pub token_latency_us: f64,
    /// One sequence: `1e6 / token_latency_us`.
    pub tokens_per_s: f64,
    /// `sequences` concurrent sequences in `micro_batches` groups of `batch` (see the module documentation):
    /// `sequences x 1e6 / max(batch_latency_us, micro_batches x batch_bottleneck_us)`.
    pub throughput_tokens_per_s: f64,
    pub sequences: usize,
    /// Rows of every stage step behind `throughput_tokens_per_s` (1: every sequence's token steps alone).
    #[serde(default = "one")]
    pub batch: usize,
    /// Groups of `batch` sequences in flight at once.
    #[serde(default = "one")]
    pub micro_batches: usize,
    /// One batch through every stage and hop (us).
    #[serde(default)]
    pub batch_latency_us: f64,
    /// The largest stage occupancy at that batch (us).
    #[serde(default)]
    pub batch_bottleneck_us: f64,
    /// Compute time of each stage (us).
    pub stage_us: Vec<f64>,
    /// Hop `i` goes from stage `i` to stage `i + 1` (the last back to the first); empty for one stage (us).
    pub hop_us: Vec<f64>,
    /// The largest stage occupancy: stage time plus the time its own link carries its two hops' hidden states
    /// (latency not included) (us).
    pub bottleneck_us: f64,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("no nodes to plan on")]
    NoNodes,
    #[error("node {id:?}: {reason}")]
    BadNode { id: String, reason: String },
    #[error("bad model description: {0}")]
    BadModel(String),
    #[error("context must be between 1 and the model's {max} positions, not {context}")]
    BadContext { context: usize, max: usize },
    #[error("at least one sequence is needed")]
    NoSequences,
    #[error("{replicas} replicas are impossible: {reason}")]
    BadReplicas { replicas: usize, reason: String },
    #[error("tensor parallel over {k} nodes is impossible: {reason}")]
    BadTensorParallel { k: usize, reason: String },
    #[error(
        "the model does not fit in the cluster's memory: it needs {} ({}) but the {nodes} nodes offer {} \
         (usable: {}% of their memory){detail}",
        human(*needed_bytes), breakdown, human(*available_bytes), (cost::USABLE_MEMORY_FRACTION * 100.0).round()
    )]
    DoesNotFit { needed_bytes: u64, available_bytes: u64, nodes: usize, breakdown: String, detail: String },
}

fn one() -> usize {
    1
}

fn human(b: u64) -> String {
    edge_node::commands::human_bytes(b)
}

impl Stage {
    /// The layers this stage runs, as the node loads them (a tensor-parallel member adds its [`StageMember::slice`]).
    pub fn spec(&self) -> ShardSpec {
        let mut s = ShardSpec::whole(self.layer_end);
        s.layer_start = self.layer_start;
        s.embed = self.embed;
        s.head = self.head;
        s
    }

    pub fn is_tensor_parallel(&self) -> bool {
        self.members.len() > 1
    }
}

impl StageMember {
    /// The member's slice of every layer, `None` when it holds whole layers.
    pub fn slice(&self, model: &ModelDescription) -> Option<LayerSlice> {
        let whole = self.kv_heads == (0, model.n_kv_heads as u32)
            && self.ffn == (0, model.ffn_dim as u32)
            && self.q_heads.is_none_or(|q| q == (0, model.n_heads as u32));
        (!whole).then_some(LayerSlice { kv_heads: self.kv_heads, ffn: self.ffn, q_heads: self.q_heads })
    }
}

impl Plan {
    /// Distinct nodes the plan uses.
    pub fn nodes_used(&self) -> usize {
        self.stages.iter().map(|s| s.members.len()).sum()
    }

    /// The node index of every stage member, in pipeline and member order.
    pub fn member_nodes(&self) -> impl Iterator<Item = usize> + '_ {
        self.stages.iter().flat_map(|s| s.members.iter().map(|m| m.node))
    }

    /// Memory the plan needs over all members.
    pub fn memory_bytes(&self) -> u64 {
        self.stages.iter().flat_map(|s| &s.members).map(|m| m.memory_bytes).sum()
    }
}

/// Plans `model` on `nodes` for `req`: see the module documentation for the cost model and the search.
pub fn plan(model: &ModelDescription, nodes: &[NodeProfile], req: &PlanRequest) -> Result<Plan, PlanError> {
    validate(model, nodes, req)?;
    let cost = CostModel::new(model, req);
    if let TpMode::Force(k) = req.tensor_parallel {
        return force_tensor_parallel(&cost, nodes, req, k);
    }
    let all: Vec<usize> = (0..nodes.len()).collect();
    let mut best: Option<Plan> = None;
    let mut offer = |p: Option<Plan>| {
        if let Some(p) = p {
            if best.as_ref().is_none_or(|b| pipeline::better(&p, b)) {
                best = Some(p);
            }
        }
    };
    // Without batched kernels anywhere a batch only costs more (see `batches`): one row is the optimum.
    let batching = nodes.iter().any(|n| n.row_gmacs > 0.0);
    for (b, m) in batches(req.sequences).into_iter().filter(|&(b, _)| batching || b == 1) {
        let cost = cost.with_batch(b);
        offer(pipeline::search(&cost, nodes, req, m, None, &all));
        if req.tensor_parallel == TpMode::Auto {
            let max_k = cost::MAX_TENSOR_PARALLEL.min(cost::tp_units(model).0).min(nodes.len());
            for k in 2..=max_k {
                let members = fastest(cost.model, nodes, k);
                let Ok(shares) = TpGroup::split(&cost, nodes, &members) else { continue };
                let group = TpGroup::new(&cost, nodes, shares);
                let others: Vec<usize> = all.iter().copied().filter(|i| !members.contains(i)).collect();
                offer(pipeline::search(&cost, nodes, req, m, Some(group), &others));
            }
        }
    }
    best.ok_or_else(|| does_not_fit(&cost, nodes))
}

/// The ways `sequences` sequences may move through a plan, as `(batch, micro_batches)`: `micro_batches =
/// ceil(sequences / batch)` groups of up to `batch` sequences, for `batch` 1, 2, 4, ... below the largest, which
/// is `sequences` or the stage worker's [`MAX_BATCH`], whichever is smaller (`(1, sequences)`: every token on its
/// own; `(sequences, 1)`: one batch of all). Powers of two keep the search to `log2(largest) + 1` batch sizes.
pub fn batches(sequences: usize) -> Vec<(usize, usize)> {
    let s = sequences.max(1);
    let top = s.min(MAX_BATCH);
    let mut out: Vec<(usize, usize)> = std::iter::successors(Some(1usize), |b| Some(b * 2))
        .take_while(|&b| b < top)
        .map(|b| (b, s.div_ceil(b)))
        .collect();
    out.push((top, s.div_ceil(top)));
    out
}

/// Evaluates `stages` (in pipeline order) under the cost model; fills nothing in, checks nothing.
/// Panics if a member's node index is out of range.
pub fn predict(model: &ModelDescription, nodes: &[NodeProfile], req: &PlanRequest, stages: &[Stage]) -> Prediction {
    let cost = CostModel::new(model, req);
    let one = occupancies(&cost, nodes, stages);
    let s = req.sequences.max(1);
    let mut best = (0.0, 1, s, one.latency, one.bottleneck);
    // Stages that do not batch take `b` times as long for `b` rows: one row is their optimum (and float rounding
    // must not make a plan of non-batching nodes look batched).
    let batching = stages.iter().any(|st| st.members.iter().all(|m| nodes[m.node].row_gmacs > 0.0));
    for (b, m) in batches(s).into_iter().filter(|&(b, _)| batching || b == 1) {
        let o = if b == 1 { one.clone() } else { occupancies(&cost.with_batch(b), nodes, stages) };
        let tps = s as f64 * 1e6 / o.latency.max(m as f64 * o.bottleneck);
        if tps > best.0 {
            best = (tps, b, m, o.latency, o.bottleneck);
        }
    }
    let (throughput_tokens_per_s, batch, micro_batches, batch_latency_us, batch_bottleneck_us) = best;
    Prediction {
        token_latency_us: one.latency,
        tokens_per_s: 1e6 / one.latency,
        throughput_tokens_per_s,
        sequences: req.sequences,
        batch,
        micro_batches,
        batch_latency_us,
        batch_bottleneck_us,
        stage_us: one.stage_us,
        hop_us: one.hop_us,
        bottleneck_us: one.bottleneck,
    }
}

/// The stages' times, hops, latency and bottleneck under `cost` (at its batch).
#[derive(Debug, Clone)]
struct Occupancies {
    stage_us: Vec<f64>,
    hop_us: Vec<f64>,
    latency: f64,
    bottleneck: f64,
}

fn occupancies(cost: &CostModel, nodes: &[NodeProfile], stages: &[Stage]) -> Occupancies {
    let mut stage_us = Vec::with_capacity(stages.len());
    let mut link_us = Vec::with_capacity(stages.len());
    let mut busy_us = Vec::with_capacity(stages.len());
    for s in stages {
        let (a, b) = (s.layer_start as usize, s.layer_end as usize);
        if let [m] = &s.members[..] {
            let n = &nodes[m.node];
            stage_us.push(cost.node_stage_us(n, a, b, s.embed, s.head));
            link_us.push(cost.link_us(n));
            busy_us.push(cost.link_busy_us(n));
        } else {
            let shares = s
                .members
                .iter()
                .map(|m| TpShare { node: m.node, kv_heads: m.kv_heads, ffn: m.ffn, q_heads: m.q_heads })
                .collect();
            let g = TpGroup::new(cost, nodes, shares);
            stage_us.push(g.stage_us(cost, nodes, a, b, s.embed, s.head));
            link_us.push(g.link_us());
            busy_us.push(g.link_busy_us);
        }
    }
    let n = stages.len();
    let hop_us: Vec<f64> = if n < 2 { Vec::new() } else { (0..n).map(|i| link_us[i] + link_us[(i + 1) % n]).collect() };
    let latency = stage_us.iter().sum::<f64>() + hop_us.iter().sum::<f64>();
    let bottleneck = if n < 2 {
        stage_us.first().copied().unwrap_or(0.0)
    } else {
        let own = (0..n).map(|i| stage_us[i] + 2.0 * busy_us[i]).fold(0.0, f64::max);
        shared_host_us(nodes, stages, &stage_us).max(own)
    };
    Occupancies { stage_us, hop_us, latency, bottleneck }
}

/// The busiest host's compute per round: the stage times of the stages with a member on it, added up (stages
/// on one machine take turns on its cores; 0 when no host holds two stages).
fn shared_host_us(nodes: &[NodeProfile], stages: &[Stage], stage_us: &[f64]) -> f64 {
    let mut by_host: HashMap<&str, (usize, f64)> = HashMap::new();
    for (s, us) in stages.iter().zip(stage_us) {
        let mut hosts: Vec<&str> = s.members.iter().filter_map(|m| nodes[m.node].host.as_deref()).collect();
        hosts.sort_unstable();
        hosts.dedup();
        for h in hosts {
            let e = by_host.entry(h).or_default();
            *e = (e.0 + 1, e.1 + us);
        }
    }
    by_host.values().filter(|(stages, _)| *stages > 1).map(|&(_, us)| us).fold(0.0, f64::max)
}

/// Fills in the stages' predicted times and the prediction.
fn finish(model: &ModelDescription, nodes: &[NodeProfile], req: &PlanRequest, mut stages: Vec<Stage>) -> Plan {
    let prediction = predict(model, nodes, req, &stages);
    for (s, us) in stages.iter_mut().zip(&prediction.stage_us) {
        s.compute_us = *us;
    }
    Plan { stages, prediction }
}

fn validate(model: &ModelDescription, nodes: &[NodeProfile], req: &PlanRequest) -> Result<(), PlanError> {
    if nodes.is_empty() {
        return Err(PlanError::NoNodes);
    }
    if model.n_layers == 0 || model.layer_weight_bytes.len() != model.n_layers || model.n_layers > 1 << 20 {
        return Err(PlanError::BadModel(format!(
            "{} layers with {} layer sizes",
            model.n_layers,
            model.layer_weight_bytes.len()
        )));
    }
    if req.sequences == 0 {
        return Err(PlanError::NoSequences);
    }
    if req.context == 0 || req.context > model.context {
        return Err(PlanError::BadContext { context: req.context, max: model.context });
    }
    for n in nodes {
        let bad = |reason: String| Err(PlanError::BadNode { id: n.id.clone(), reason });
        if !(n.gemv_gbps.is_finite() && n.gemv_gbps > 0.0) {
            return bad(format!("GEMV bandwidth {} GB/s is not a positive number", n.gemv_gbps));
        }
        if !(n.dispatch_us.is_finite() && n.dispatch_us >= 0.0) {
            return bad(format!("dispatch cost {} us is not a non-negative number", n.dispatch_us));
        }
        if !(n.row_gmacs.is_finite() && n.row_gmacs >= 0.0) {
            return bad(format!("batched row rate {} G MAC/s is not a non-negative number", n.row_gmacs));
        }
        if !(n.link.latency_us.is_finite() && n.link.latency_us >= 0.0) {
            return bad(format!("link latency {} us is not a non-negative number", n.link.latency_us));
        }
        if !(n.link.bandwidth_mbps.is_finite() && n.link.bandwidth_mbps > 0.0) {
            return bad(format!("link bandwidth {} MB/s is not a positive number", n.link.bandwidth_mbps));
        }
    }
    Ok(())
}

/// Node indices fastest first: reading `model`'s weights ([`NodeProfile::weight_gbps`]), then memory, then
/// index.
fn fastest_first(model: &ModelDescription, nodes: &[NodeProfile]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|&a, &b| {
        nodes[b]
            .weight_gbps(model)
            .total_cmp(&nodes[a].weight_gbps(model))
            .then(nodes[b].memory_bytes.cmp(&nodes[a].memory_bytes))
            .then(a.cmp(&b))
    });
    order
}

/// The `k` fastest nodes ([`fastest_first`]), in index order.
fn fastest(model: &ModelDescription, nodes: &[NodeProfile], k: usize) -> Vec<usize> {
    let mut order = fastest_first(model, nodes);
    order.truncate(k);
    order.sort_unstable();
    order
}

fn force_tensor_parallel(
    cost: &CostModel,
    nodes: &[NodeProfile],
    req: &PlanRequest,
    k: usize,
) -> Result<Plan, PlanError> {
    let bad = |reason: String| PlanError::BadTensorParallel { k, reason };
    if k < 2 {
        return Err(bad("it needs at least 2 nodes (use off for whole layers)".into()));
    }
    if k > nodes.len() {
        return Err(bad(format!("the cluster has only {} nodes", nodes.len())));
    }
    let members = fastest(cost.model, nodes, k);
    let shares = TpGroup::split(cost, nodes, &members).map_err(bad)?;
    let group = TpGroup::new(cost, nodes, shares);
    let l = cost.n_layers();
    let stage = pipeline::group_stage(cost, &group, 0, l);
    for m in &stage.members {
        let usable = usable_memory(nodes[m.node].memory_bytes);
        if m.memory_bytes > usable {
            return Err(bad(format!(
                "node {:?} needs {} for kv heads {}..{} and ffn columns {}..{} but offers {} usable",
                nodes[m.node].id,
                human(m.memory_bytes),
                m.kv_heads.0,
                m.kv_heads.1,
                m.ffn.0,
                m.ffn.1,
                human(usable)
            )));
        }
    }
    Ok(finish(cost.model, nodes, req, vec![stage]))
}

fn does_not_fit(cost: &CostModel, nodes: &[NodeProfile]) -> PlanError {
    let l = cost.n_layers();
    let m = cost.model;
    let needed_bytes = cost.stage_memory(0, l, true, true);
    let available_bytes: u64 = nodes.iter().map(|n| usable_memory(n.memory_bytes)).sum();
    let largest = nodes.iter().map(|n| usable_memory(n.memory_bytes)).max().unwrap_or(0);
    let breakdown = format!(
        "weights {}, KV cache {} for {} positions x {} sequences, workspace {}",
        human(cost.layer_bytes(0, l) + m.embed_bytes + m.head_bytes),
        human(cost.kv_cache_bytes(0, l)),
        cost.context,
        cost.sequences,
        human(cost.workspace_bytes(true))
    );
    let detail = if available_bytes >= needed_bytes {
        format!(
            ", and no split into stages fits the nodes (the largest offers {}; every stage adds a workspace)",
            human(largest)
        )
    } else {
        String::new()
    };
    PlanError::DoesNotFit { needed_bytes, available_bytes, nodes: nodes.len(), breakdown, detail }
}
