//! The cost model of the planner, as documented in [`super`]: stage times, stage memory, links and the
//! tensor-parallel split. Every function here is pure; the DP ([`super::pipeline`]) and [`super::predict`] both
//! call them, so a plan's prediction is the model's number for it.

use super::{NodeProfile, PlanRequest};
use crate::ModelDescription;

/// Fixed cost of one step of a stage: one submit and one readback (us).
pub const STEP_OVERHEAD_US: f64 = 100.0;
/// Synchronisation cost of a tensor-parallel half-layer: the partial sums are read back, exchanged and the next
/// half submitted (us); paid twice per layer (after attention, after the FFN).
pub const TP_SYNC_US: f64 = 150.0;
/// Kernel dispatches per transformer layer (see the README's structure targets).
pub const DISPATCHES_PER_LAYER: f64 = 6.0;
/// Dispatches of the embedding lookup.
pub const EMBED_DISPATCHES: f64 = 1.0;
/// Dispatches of the final norm and the output head.
pub const HEAD_DISPATCHES: f64 = 2.0;
/// Share of a node's reported memory (`MemAvailable` of the member) the planner lets a stage use.
pub const USABLE_MEMORY_FRACTION: f64 = 0.9;
/// Most tokens one step of a stage processes (prefill chunks): sizes the activation workspace.
pub const MAX_STEP_TOKENS: u64 = 256;
/// Rows of logits the head produces per step (sizes the head's workspace).
pub const HEAD_ROWS: u64 = 32;
/// Most members of a tensor-parallel group the planner considers in `TpMode::Auto`.
pub const MAX_TENSOR_PARALLEL: usize = 8;
/// Tokens in flight per step in decode (one sequence's next token).
pub const DECODE_TOKENS: u64 = 1;

/// Bytes of a node's memory a plan may use.
pub fn usable_memory(memory_bytes: u64) -> u64 {
    (memory_bytes as f64 * USABLE_MEMORY_FRACTION).floor() as u64
}

/// The smallest `memory_bytes` whose [`usable_memory`] is at least `usable` (tests build nodes with it).
pub fn memory_for_usable(usable: u64) -> u64 {
    let mut m = (usable as f64 / USABLE_MEMORY_FRACTION).ceil() as u64;
    while usable_memory(m) < usable {
        m += 1;
    }
    while m > 0 && usable_memory(m - 1) >= usable {
        m -= 1;
    }
    m
}

/// The model and request, with prefix sums of the layer bytes: what every cost formula needs.
#[derive(Debug, Clone)]
pub struct CostModel<'a> {
    pub model: &'a ModelDescription,
    pub context: usize,
    pub sequences: usize,
    /// Rows (sequences' tokens) in every stage step the times below are for: 1 for one sequence's decode.
    pub batch: usize,
    prefix: Vec<u64>,
    /// Prefix sums of each layer's KV cache bytes (every sequence), and the most any `m` consecutive layers hold.
    kv_prefix: Vec<u64>,
    kv_max: Vec<u64>,
}

impl<'a> CostModel<'a> {
    pub fn new(model: &'a ModelDescription, req: &PlanRequest) -> CostModel<'a> {
        let mut prefix = Vec::with_capacity(model.layer_weight_bytes.len() + 1);
        prefix.push(0u64);
        for &b in &model.layer_weight_bytes {
            prefix.push(prefix.last().unwrap().saturating_add(b));
        }
        let n = model.layer_weight_bytes.len();
        let per_seq = |l: usize| model.kv_bytes_per_token_per_layer.saturating_mul(kv_positions(model, l, req.context));
        let mut kv_prefix = vec![0u64];
        for l in 0..n {
            let b = per_seq(l).saturating_mul(req.sequences as u64);
            kv_prefix.push(kv_prefix[l].saturating_add(b));
        }
        let kv_max = (0..=n).map(|m| (0..=n - m).map(|a| kv_prefix[a + m] - kv_prefix[a]).max().unwrap_or(0)).collect();
        CostModel { model, context: req.context, sequences: req.sequences, batch: 1, prefix, kv_prefix, kv_max }
    }

    /// The same model with `batch` rows in every step.
    pub fn with_batch(&self, batch: usize) -> CostModel<'a> {
        CostModel { batch: batch.max(1), ..self.clone() }
    }

    /// A step of [`CostModel::batch`] rows on node `n` from what one row costs (`one`, us) and what each further
    /// row adds on a node with batched kernels (`extra_row`, us): `one + (batch - 1) x extra_row` when the node
    /// measured a batched rate (`row_gmacs > 0`: the rows share one read of the weights), else `batch x one`
    /// (its backend runs the rows one after another).
    pub fn rows(&self, n: &NodeProfile, one: f64, extra_row: f64) -> f64 {
        batch_time(self.batch as f64, n.row_gmacs > 0.0, one, extra_row)
    }

    /// Time (us) `macs` multiply-adds of one more row take on node `n` in a batched step (0 without a batched
    /// rate, where [`CostModel::rows`] does not use it).
    pub fn row_us(&self, n: &NodeProfile, macs: f64) -> f64 {
        if n.row_gmacs > 0.0 {
            macs / (n.row_gmacs * 1e3)
        } else {
            0.0
        }
    }

    /// Multiply-adds of one token through one layer (its weights' parameter count).
    pub fn layer_macs(&self) -> f64 {
        self.model.flops_per_token_per_layer as f64 / 2.0
    }

    /// Multiply-adds of one token through the output head.
    pub fn head_macs(&self) -> f64 {
        self.model.dim as f64 * self.model.vocab as f64
    }

    pub fn n_layers(&self) -> usize {
        self.prefix.len() - 1
    }

    /// Weight bytes of layers `[a, b)`.
    pub fn layer_bytes(&self, a: usize, b: usize) -> u64 {
        self.prefix[b] - self.prefix[a]
    }

    /// Mean weight bytes of a layer (the DP's per-layer figure; exact when all layers are the same size).
    pub fn mean_layer_bytes(&self) -> f64 {
        if self.n_layers() == 0 {
            0.0
        } else {
            self.prefix[self.n_layers()] as f64 / self.n_layers() as f64
        }
    }

    /// KV cache bytes one decode step reads per layer: the cache of one sequence, half full on average (at most
    /// the window on a sliding-window layer), averaged over the layers.
    pub fn kv_read_bytes_per_layer(&self) -> f64 {
        let half = self.context as f64 / 2.0;
        let n = self.n_layers().max(1);
        let read = |l: usize| match self.model.layer_windows.get(l).copied().flatten() {
            Some(w) => half.min(w as f64),
            None => half,
        };
        self.model.kv_bytes_per_token_per_layer as f64 * (0..n).map(read).sum::<f64>() / n as f64
    }

    /// KV cache bytes a stage of layers `[a, b)` holds for all `sequences` (see [`kv_positions`]).
    pub fn kv_cache_bytes(&self, a: usize, b: usize) -> u64 {
        self.kv_prefix[b] - self.kv_prefix[a]
    }

    /// The most KV cache bytes any `m` consecutive layers hold (the DP's memory check by stage length).
    pub fn kv_cache_bytes_max(&self, m: usize) -> u64 {
        self.kv_max[m.min(self.kv_max.len() - 1)]
    }

    /// Activation workspace of a stage: `MAX_STEP_TOKENS x (x + qkv + q + attention + ffn + staging) x 4` bytes,
    /// plus `HEAD_ROWS x vocab x 4` of logits on a head stage.
    pub fn workspace_bytes(&self, head: bool) -> u64 {
        let m = self.model;
        let per_token = 2 * m.dim + (m.q_dim() + 2 * m.kv_dim()) + m.q_dim() + m.q_dim() + m.ffn_dim;
        let logits = if head { HEAD_ROWS * m.vocab as u64 * 4 } else { 0 };
        MAX_STEP_TOKENS * per_token as u64 * 4 + logits
    }

    /// Memory of a stage of whole layers `[a, b)` on one node.
    pub fn stage_memory(&self, a: usize, b: usize, embed: bool, head: bool) -> u64 {
        let m = self.model;
        self.layer_bytes(a, b)
            + if embed { m.embed_bytes } else { 0 }
            + if head { m.head_bytes } else { 0 }
            + self.kv_cache_bytes(a, b)
            + self.workspace_bytes(head)
    }

    /// The one-way cost of a node's own link for one hop (us): its latency plus [`CostModel::link_busy_us`]. A hop
    /// `a -> b` costs `link_us(a) + link_us(b)`; a batch's rows follow each other after one latency.
    pub fn link_us(&self, n: &NodeProfile) -> f64 {
        n.link.latency_us + self.link_busy_us(n)
    }

    /// The time a node's own link is busy with one hop (us): every row's hidden state over its bandwidth. Unlike
    /// the latency, this keeps the link from carrying the next step.
    pub fn link_busy_us(&self, n: &NodeProfile) -> f64 {
        let bytes = (self.model.activation_bytes_per_token * DECODE_TOKENS) as f64 / n.link.bandwidth_mbps;
        self.batch.max(1) as f64 * bytes
    }

    /// Time (us) node `n` takes to read `weights` bytes of layer weights and `kv` bytes of KV cache as the model
    /// description counts them (a wgpu node's: matrices as it holds them, an f32 cache): at its GEMV bandwidth,
    /// or at what that makes of the description's bytes when it reads the file's blocks and an f16 cache (the cpu
    /// backend, [`NodeProfile::weight_gbps`], [`NodeProfile::kv_gbps`]).
    pub fn read_us(&self, n: &NodeProfile, weights: f64, kv: f64) -> f64 {
        weights / (n.weight_gbps(self.model) * 1e3) + kv / (n.kv_gbps() * 1e3)
    }

    /// Time (us) of one layer of `bytes` weights on node `n`: weights and KV read at GEMV bandwidth, dispatches;
    /// each further row of a batch reads its own KV cache and adds its multiply-adds at the batched rate.
    pub fn node_layer_us(&self, n: &NodeProfile, bytes: f64) -> f64 {
        let kv = self.read_us(n, 0.0, self.kv_read_bytes_per_layer());
        let one = self.read_us(n, bytes, 0.0) + kv + DISPATCHES_PER_LAYER * n.dispatch_us;
        self.rows(n, one, kv + self.row_us(n, self.layer_macs()))
    }

    /// Embedding lookup on node `n` (us).
    pub fn embed_us(&self, n: &NodeProfile) -> f64 {
        self.rows(n, EMBED_DISPATCHES * n.dispatch_us, 0.0)
    }

    /// Final norm and head of one row on node `n` (us).
    pub fn head_one_us(&self, n: &NodeProfile) -> f64 {
        self.model.head_bytes as f64 / (n.head_gbps(self.model) * 1e3) + HEAD_DISPATCHES * n.dispatch_us
    }

    /// Final norm and head on node `n` (us).
    pub fn head_us(&self, n: &NodeProfile) -> f64 {
        self.rows(n, self.head_one_us(n), self.row_us(n, self.head_macs()))
    }

    /// The fixed cost of a step on node `n` (us): [`STEP_OVERHEAD_US`] once per step.
    pub fn step_overhead_us(&self, n: &NodeProfile) -> f64 {
        self.rows(n, STEP_OVERHEAD_US, 0.0)
    }

    /// Compute time (us) of one decode step (of [`CostModel::batch`] rows) of whole layers `[a, b)` on node `n`.
    pub fn node_stage_us(&self, n: &NodeProfile, a: usize, b: usize, embed: bool, head: bool) -> f64 {
        let layers = (b - a) as f64;
        let kv = self.read_us(n, 0.0, self.kv_read_bytes_per_layer() * layers);
        let one =
            self.read_us(n, self.layer_bytes(a, b) as f64, 0.0) + kv + DISPATCHES_PER_LAYER * layers * n.dispatch_us;
        self.rows(n, one, kv + self.row_us(n, layers * self.layer_macs()))
            + if embed { self.embed_us(n) } else { 0.0 }
            + if head { self.head_us(n) } else { 0.0 }
            + self.step_overhead_us(n)
    }
}

/// One member's part of every layer of a tensor-parallel stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TpShare {
    /// Index into the nodes.
    pub node: usize,
    /// Key/value heads `[start, end)` (with their query heads).
    pub kv_heads: (u32, u32),
    /// FFN columns `[start, end)`.
    pub ffn: (u32, u32),
    /// Query heads `[start, end)` inside the one key/value head, for a model that has only one ([`tp_units`]).
    pub q_heads: Option<(u32, u32)>,
}

/// What a tensor-parallel split deals out: whole key/value heads (with their query heads), or, for a model with
/// a single key/value head, its query heads, every member then holding the key/value head whole. Returns the
/// number of units and whether they are query heads.
pub fn tp_units(m: &ModelDescription) -> (usize, bool) {
    if m.n_kv_heads == 1 && m.n_heads > 1 {
        (m.n_heads, true)
    } else {
        (m.n_kv_heads, false)
    }
}

/// The fractions of a layer's attention weights and of its KV cache a member with `units` of the model's
/// [`tp_units`] holds.
fn head_share(m: &ModelDescription, units: usize) -> (f64, f64) {
    let (total, query) = tp_units(m);
    let f = units as f64 / total.max(1) as f64;
    if !query {
        return (f, f);
    }
    // Every member reads all of Wk and Wv and its query heads' rows of Wq and columns of Wo.
    let (q, kv) = (m.q_dim() as f64, m.kv_dim() as f64);
    ((f * q + kv) / (q + kv), 1.0)
}

impl TpShare {
    /// How many of the model's [`tp_units`] the member holds.
    pub fn units(&self) -> usize {
        let (a, b) = self.q_heads.unwrap_or(self.kv_heads);
        (b - a) as usize
    }
}

/// A tensor-parallel group: its members' shares and the derived costs.
#[derive(Debug, Clone)]
pub struct TpGroup {
    pub shares: Vec<TpShare>,
    /// Fraction of a layer's weight bytes each member reads.
    weight_share: Vec<f64>,
    /// Fraction of the KV heads each member holds.
    kv_share: Vec<f64>,
    /// One all-reduce (us): of a `dim` hidden state, or of every row's in a step of a batching group.
    pub allreduce_us: f64,
    /// The part of [`TpGroup::link_us`] that keeps the leader's link busy: every row's hidden state over its
    /// bandwidth.
    pub link_busy_us: f64,
    /// The leader's link latency, the rest of [`TpGroup::link_us`].
    pub link_latency_us: f64,
    /// Rows of the cost model's batch.
    rows: f64,
    /// Every member measured a batched rate: the group runs a batch's rows as one step (the leader tells the
    /// others which), each further row adding its multiply-adds and KV read on each member and its hidden state
    /// to the all-reduces; else it runs them one after another, `rows` single-row steps.
    batched: bool,
}

impl TpGroup {
    /// Splits the model over `members` (node indices, in member order): each gets a contiguous range of whole kv
    /// heads (at least one), heads going one by one to the member with the fewest heads per GB/s, then a contiguous
    /// range of FFN blocks (at least one), blocks going one by one to the member whose layer time stays lowest.
    pub fn split(cost: &CostModel, nodes: &[NodeProfile], members: &[usize]) -> Result<Vec<TpShare>, String> {
        let m = cost.model;
        let k = members.len();
        let ((heads, query), ffn, block) = (tp_units(m), m.ffn_dim, m.ffn_block.max(1));
        let blocks = ffn.div_ceil(block);
        if k < 2 {
            return Err("a tensor-parallel stage needs at least 2 nodes".into());
        }
        if k > heads {
            let what = if query { "query heads" } else { "key/value heads" };
            return Err(format!("the model has only {heads} {what}: at most {heads} members"));
        }
        if k > blocks {
            return Err(format!("the FFN has only {blocks} blocks of {block} columns: at most {blocks} members"));
        }
        let g: Vec<f64> = members.iter().map(|&i| nodes[i].weight_gbps(m)).collect();
        let mut h = vec![1usize; k];
        for _ in k..heads {
            let i = argmin((0..k).map(|i| (h[i] + 1) as f64 / g[i]));
            h[i] += 1;
        }
        let attn = m.attention_weight_fraction();
        let w = cost.mean_layer_bytes();
        let kv_read = cost.kv_read_bytes_per_layer();
        let layer_us = |i: usize, f_blocks: usize| {
            let cols = (f_blocks * block).min(ffn) as f64;
            let (attn_share, kv_share) = head_share(m, h[i]);
            let share = attn * attn_share + (1.0 - attn) * cols / ffn.max(1) as f64;
            let n = &nodes[members[i]];
            cost.read_us(n, w * share, kv_read * kv_share) + DISPATCHES_PER_LAYER * n.dispatch_us
        };
        let mut f = vec![1usize; k];
        for _ in k..blocks {
            let i = argmin((0..k).map(|i| layer_us(i, f[i] + 1)));
            f[i] += 1;
        }
        let (mut h0, mut f0) = (0usize, 0usize);
        Ok((0..k)
            .map(|i| {
                let range = (h0 as u32, (h0 + h[i]) as u32);
                let (kv_heads, q_heads) = if query { ((0, 1), Some(range)) } else { (range, None) };
                let cols = (f0 * block, ((f0 + f[i]) * block).min(ffn));
                h0 += h[i];
                f0 += f[i];
                TpShare { node: members[i], kv_heads, ffn: (cols.0 as u32, cols.1 as u32), q_heads }
            })
            .collect())
    }

    pub fn new(cost: &CostModel, nodes: &[NodeProfile], shares: Vec<TpShare>) -> TpGroup {
        let m = cost.model;
        let attn = m.attention_weight_fraction();
        let ffn = m.ffn_dim.max(1) as f64;
        let heads: Vec<(f64, f64)> = shares.iter().map(|s| head_share(m, s.units())).collect();
        let kv_share: Vec<f64> = heads.iter().map(|h| h.1).collect();
        let weight_share = shares
            .iter()
            .zip(&heads)
            .map(|(s, h)| attn * h.0 + (1.0 - attn) * (s.ffn.1 - s.ffn.0) as f64 / ffn)
            .collect();
        let k = shares.len() as f64;
        let reduce_bytes = (m.dim as u64 * 4 * DECODE_TOKENS) as f64 * (k - 1.0);
        let rows = cost.batch.max(1) as f64;
        let batched = rows > 1.0 && shares.iter().all(|s| nodes[s.node].row_gmacs > 0.0);
        let together = if batched { rows } else { 1.0 }; // rows in one all-reduce, one hop
        let allreduce_us = shares
            .iter()
            .map(|s| {
                let l = &nodes[s.node].link;
                2.0 * l.latency_us + together * reduce_bytes / l.bandwidth_mbps
            })
            .fold(0.0, f64::max);
        let (link_latency_us, link_busy_us) = shares.first().map_or((0.0, 0.0), |s| {
            let l = &nodes[s.node].link;
            (l.latency_us, rows * (m.activation_bytes_per_token * DECODE_TOKENS) as f64 / l.bandwidth_mbps)
        });
        TpGroup { shares, weight_share, kv_share, allreduce_us, link_busy_us, link_latency_us, rows, batched }
    }

    /// The group's link term: its leader's (member 0 receives the stage input and sends its output), latency
    /// and every row's hidden state.
    pub fn link_us(&self) -> f64 {
        self.link_latency_us + self.link_busy_us
    }

    /// A time of the group's step from one row's (`one`) and what each further row adds (`extra`).
    fn scale(&self, one: f64, extra: f64) -> f64 {
        batch_time(self.rows, self.batched, one, extra)
    }

    /// How many separate steps a batch takes: 1 when the group batches, else one per row.
    fn steps(&self) -> f64 {
        if self.batched {
            1.0
        } else {
            self.rows
        }
    }

    /// Fraction of a layer's weight bytes member `i` reads (the simulator times each member separately).
    pub fn weight_share(&self, i: usize) -> f64 {
        self.weight_share[i]
    }

    /// Fraction of the KV heads member `i` holds.
    pub fn kv_share(&self, i: usize) -> f64 {
        self.kv_share[i]
    }

    /// The leader forwarding the stage input to the other members (us): token ids on the first stage (4 bytes
    /// each), the hidden state otherwise; `k - 1` copies leave over the leader's link.
    pub fn broadcast_us(&self, cost: &CostModel, nodes: &[NodeProfile], embed: bool) -> f64 {
        let Some(leader) = self.shares.first().map(|s| &nodes[s.node].link) else { return 0.0 };
        let bytes = if embed {
            (4 * DECODE_TOKENS) as f64
        } else {
            (cost.model.activation_bytes_per_token * DECODE_TOKENS) as f64
        };
        let copies = (self.shares.len() - 1) as f64;
        let bytes = bytes * self.rows / self.steps();
        self.steps()
            * self.shares[1..]
                .iter()
                .map(|s| {
                    let l = &nodes[s.node].link;
                    leader.latency_us + l.latency_us + bytes * copies / leader.bandwidth_mbps + bytes / l.bandwidth_mbps
                })
                .fold(0.0, f64::max)
    }

    /// Time (us) of one layer of `bytes` weights in a step of the cost model's batch: the slowest member, two
    /// all-reduces and two syncs (per row when the group does not batch).
    pub fn layer_us(&self, cost: &CostModel, nodes: &[NodeProfile], bytes: f64) -> f64 {
        let kv_read = cost.kv_read_bytes_per_layer();
        let slowest = self
            .shares
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n = &nodes[s.node];
                let kv = cost.read_us(n, 0.0, kv_read * self.kv_share[i]);
                let one =
                    cost.read_us(n, bytes * self.weight_share[i], 0.0) + kv + DISPATCHES_PER_LAYER * n.dispatch_us;
                self.scale(one, kv + cost.row_us(n, cost.layer_macs() * self.weight_share[i]))
            })
            .fold(0.0, f64::max);
        slowest + 2.0 * self.steps() * (self.allreduce_us + TP_SYNC_US)
    }

    /// Embedding lookup (replicated on every member; us).
    pub fn embed_us(&self, nodes: &[NodeProfile]) -> f64 {
        self.shares.iter().map(|s| self.scale(EMBED_DISPATCHES * nodes[s.node].dispatch_us, 0.0)).fold(0.0, f64::max)
    }

    /// Head (replicated on every member; us).
    pub fn head_us(&self, cost: &CostModel, nodes: &[NodeProfile]) -> f64 {
        let head = |n: &NodeProfile| self.scale(cost.head_one_us(n), cost.row_us(n, cost.head_macs()));
        self.shares.iter().map(|s| head(&nodes[s.node])).fold(0.0, f64::max)
    }

    /// The fixed cost of the group's step (us): [`STEP_OVERHEAD_US`] per separate step.
    pub fn step_overhead_us(&self) -> f64 {
        self.steps() * STEP_OVERHEAD_US
    }

    /// Compute time (us) of one decode step (of the cost model's batch) of layers `[a, b)`.
    pub fn stage_us(
        &self,
        cost: &CostModel,
        nodes: &[NodeProfile],
        a: usize,
        b: usize,
        embed: bool,
        head: bool,
    ) -> f64 {
        (a..b).map(|l| self.layer_us(cost, nodes, cost.model.layer_weight_bytes[l] as f64)).sum::<f64>()
            + if embed { self.embed_us(nodes) } else { 0.0 }
            + if head { self.head_us(cost, nodes) } else { 0.0 }
            + self.broadcast_us(cost, nodes, embed)
            + self.step_overhead_us()
    }

    /// Memory of member `i` for layers holding `weight_bytes` of whole-layer weights and `all_kv` of whole KV cache.
    pub fn member_memory(
        &self,
        cost: &CostModel,
        i: usize,
        weight_bytes: u64,
        all_kv: u64,
        embed: bool,
        head: bool,
    ) -> u64 {
        let m = cost.model;
        let s = &self.shares[i];
        let kv = match s.q_heads {
            Some(_) => all_kv, // the one KV head, whole
            None => all_kv / m.n_kv_heads.max(1) as u64 * (s.kv_heads.1 - s.kv_heads.0) as u64,
        };
        (weight_bytes as f64 * self.weight_share[i]).ceil() as u64
            + kv
            + if embed { m.embed_bytes } else { 0 }
            + if head { m.head_bytes } else { 0 }
            + cost.workspace_bytes(head)
    }
}

/// Positions of layer `l`'s KV cache a node holds for one sequence of `context`: all of them, or on a sliding-window
/// layer the window and one step's rows beyond it (the cpu backend's own count, `window - 1 + STEP_SLACK`).
pub fn kv_positions(model: &ModelDescription, l: usize, context: usize) -> u64 {
    edge_node::cpu::kv::rows(model.layer_windows.get(l).copied().flatten(), context) as u64
}

/// Index of the smallest value (the first one on ties).
fn argmin(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::INFINITY);
    for (i, v) in values.enumerate() {
        if v < best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// A step of `rows` rows from what one row costs (`one`) and what each further row adds when the rows run as one
/// batched step (`extra`): `one + (rows - 1) x extra` when `batched`, else `rows x one` (one step per row).
fn batch_time(rows: f64, batched: bool, one: f64, extra: f64) -> f64 {
    if rows <= 1.0 {
        one
    } else if batched {
        one + (rows - 1.0) * extra
    } else {
        rows * one
    }
}
