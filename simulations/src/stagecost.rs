//! How long one step of a stage takes: the planner's cost model ([`edge_coord::plan::cost`]) evaluated at the
//! step's real KV-cache length, times the device's calibration, with a FLOPS floor for prefill chunks and, for a
//! tensor-parallel stage, every all-reduce and the leader's broadcast sampled from the members' links.
//!
//! - **Decode** (one token at position `p`, reading `p + 1` cached positions): for a node,
//!   `factor x node_stage_us(context = 2 (p + 1))` — the planner's stage time, whose KV term assumes a cache half
//!   full of `context`. With calibration 1 and no jitter a step takes exactly the planner's stage time.
//! - **Prefill** (a chunk of `T` tokens from position `p0`): `max(factor x bandwidth time of the chunk,
//!   T x FLOPs per token / prefill_gflops)`: weights are streamed once per chunk, compute grows with `T`.
//! - **A batch** (a stage whose node measured a batched rate, `row_gmacs > 0`, runs the waiting steps of
//!   different requests as one step, as the runtime's CPU backend does): `factor x (node_stage_us at an empty
//!   cache + every step's KV read at its own positions + (rows - 1) x row_us)`, `row_us` being the planner's
//!   [`CostModel::row_us`] of one row's multiply-adds; for chunks of several tokens at least their FLOPs over
//!   `prefill_gflops`. One decode step alone takes exactly the decode time above. A tensor-parallel group batches
//!   when all its members do: the formula below with every step's rows, each member adding per further row its
//!   share of a row's multiply-adds (and the head's), the all-reduces and the broadcast carrying every row.
//! - **Tensor parallel**: per layer, the slowest member's time (each member its share of the weights and KV
//!   heads, times its own factor), plus two all-reduces (the slowest member's `2 x latency + bytes / bw` with
//!   sampled jitter and loss) and two `TP_SYNC_US`; plus the replicated embedding/head, the leader's broadcast of
//!   the stage input and `STEP_OVERHEAD_US`. All-reduces and broadcasts do not queue behind other traffic.

use edge_coord::plan::cost::{
    CostModel, TpGroup, TpShare, DISPATCHES_PER_LAYER, EMBED_DISPATCHES, HEAD_DISPATCHES, STEP_OVERHEAD_US, TP_SYNC_US,
};
use edge_coord::plan::{NodeProfile, PlanRequest, Stage};
use edge_coord::ModelDescription;
use rand::rngs::StdRng;

use crate::cluster::SimNode;
use crate::net;
use crate::profiles::LinkSpec;

/// A member's constants.
#[derive(Debug, Clone)]
struct Member {
    /// Global node index.
    node: usize,
    factor: f64,
    gflops: f64,
    /// GB/s at which the member reads the layers' and the head's weight bytes and the KV cache bytes the model
    /// description counts: its GEMV bandwidth, or what that makes of them on a node that reads the file's blocks
    /// and an f16 cache (as the planner: `NodeProfile::weight_gbps`, `head_gbps`, `kv_gbps`).
    gbps: f64,
    head_gbps: f64,
    kv_gbps: f64,
    dispatch_us: f64,
    link: LinkSpec,
    weight_share: f64,
    kv_share: f64,
    /// What each row after the first adds to this member's part of a layer, and to the head, in a batched step
    /// (us, before the factor; 0 without a batched rate).
    row_layer_us: f64,
    row_head_us: f64,
}

/// The costs of one stage of a plan.
#[derive(Debug, Clone)]
pub struct StageCost {
    layers: usize,
    embed: bool,
    head: bool,
    members: Vec<Member>,
    /// A pipeline stage: its time with an empty KV cache (us, before the factor).
    fixed_us: f64,
    /// Weight bytes of each layer of the stage.
    layer_bytes: Vec<f64>,
    kv_bytes_per_pos_layer: f64,
    /// Each layer's sliding window (gemma3's local layers read at most that many positions), `None`: every one.
    windows: Vec<Option<usize>>,
    dim_bytes: u64,
    head_bytes: f64,
    /// Head FLOPs (one row of logits per step).
    head_flops: f64,
    /// A stage whose nodes all batch (a tensor-parallel group batches when all its members do, as the runtime
    /// wires it): for a single node, what each row after the first adds (us, before the factor).
    row_us: Option<f64>,
    flops_layer: f64,
    q_dim: f64,
    act_bytes: u64,
}

impl StageCost {
    /// `stage` of a plan made over `profiles` (the planner's nodes); `global[i]` is the cluster index of
    /// planner node `i`.
    pub fn new(
        model: &ModelDescription,
        nodes: &[SimNode],
        profiles: &[NodeProfile],
        global: &[usize],
        stage: &Stage,
    ) -> StageCost {
        let req0 = PlanRequest { context: 0, sequences: 1, tensor_parallel: edge_coord::plan::TpMode::Off };
        let cost = CostModel::new(model, &req0);
        let (a, b) = (stage.layer_start as usize, stage.layer_end as usize);
        let shares: Vec<TpShare> = stage
            .members
            .iter()
            .map(|m| TpShare { node: m.node, kv_heads: m.kv_heads, ffn: m.ffn, q_heads: m.q_heads })
            .collect();
        let group = (shares.len() > 1).then(|| TpGroup::new(&cost, profiles, shares));
        let members = stage
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let n = &nodes[global[m.node]];
                Member {
                    node: global[m.node],
                    factor: n.device.time_factor(),
                    gflops: n.device.prefill_gflops,
                    gbps: profiles[m.node].weight_gbps(cost.model),
                    head_gbps: profiles[m.node].head_gbps(cost.model),
                    kv_gbps: profiles[m.node].kv_gbps(),
                    dispatch_us: profiles[m.node].dispatch_us,
                    link: n.link,
                    weight_share: group.as_ref().map_or(1.0, |g| g.weight_share(i)),
                    kv_share: group.as_ref().map_or(1.0, |g| g.kv_share(i)),
                    row_layer_us: cost.row_us(
                        &profiles[m.node],
                        cost.layer_macs() * group.as_ref().map_or(1.0, |g| g.weight_share(i)),
                    ),
                    row_head_us: cost.row_us(&profiles[m.node], cost.head_macs()),
                }
            })
            .collect::<Vec<_>>();
        let leader = &profiles[stage.members[0].node];
        let fixed_us = cost.node_stage_us(leader, a, b, stage.embed, stage.head);
        let head_macs = if stage.head { cost.head_macs() } else { 0.0 };
        let batches = stage.members.iter().all(|m| profiles[m.node].row_gmacs > 0.0);
        let row_us = batches.then(|| cost.row_us(leader, (b - a) as f64 * cost.layer_macs() + head_macs));
        StageCost {
            row_us,
            layers: b - a,
            embed: stage.embed,
            head: stage.head,
            members,
            fixed_us,
            layer_bytes: model.layer_weight_bytes[a..b].iter().map(|&x| x as f64).collect(),
            kv_bytes_per_pos_layer: model.kv_bytes_per_token_per_layer as f64,
            windows: (a..b).map(|l| model.layer_windows.get(l).copied().flatten()).collect(),
            dim_bytes: model.dim as u64 * 4,
            head_bytes: model.head_bytes as f64,
            head_flops: 2.0 * model.dim as f64 * model.vocab as f64,
            flops_layer: model.flops_per_token_per_layer as f64,
            q_dim: model.q_dim() as f64,
            act_bytes: model.activation_bytes_per_token,
        }
    }

    /// Cluster index of the leader (member 0: receives the stage input, sends its output).
    pub fn leader(&self) -> usize {
        self.members[0].node
    }

    /// Cluster indices of every member.
    pub fn nodes(&self) -> impl Iterator<Item = usize> + '_ {
        self.members.iter().map(|m| m.node)
    }

    /// Fraction of each layer's weights member `i` holds.
    pub fn weight_share(&self, i: usize) -> f64 {
        self.members[i].weight_share
    }

    pub fn is_tensor_parallel(&self) -> bool {
        self.members.len() > 1
    }

    /// Whether the stage runs the waiting steps of several requests as one batch.
    pub fn batches(&self) -> bool {
        self.row_us.is_some()
    }

    /// Time (us) of one batched step of `steps` (tokens, first position) on a stage that [`StageCost::batches`].
    pub fn batch_us(&self, steps: &[(usize, usize)], rng: &mut StdRng) -> f64 {
        if self.members.len() > 1 {
            return self.group_step_us(steps, rng);
        }
        let (m, row_us) = (&self.members[0], self.row_us.unwrap_or(0.0));
        let rows: usize = steps.iter().map(|s| s.0).sum();
        let positions: usize = steps.iter().map(|&(t, p)| p + t).sum();
        let kv = self.kv_bytes_per_pos_layer * self.read_positions(positions as f64) / (m.kv_gbps * 1e3);
        let time = m.factor * (self.fixed_us + kv + rows.saturating_sub(1) as f64 * row_us);
        let flops: f64 = steps
            .iter()
            .filter(|s| s.0 > 1)
            .map(|&(t, p)| t as f64 * self.flops_of(p as f64 + (t as f64 + 1.0) / 2.0))
            .sum();
        time.max(flops / (m.gflops * 1e3))
    }

    /// Time (us) of a step of `tokens` tokens starting at position `pos` (decode: `tokens == 1`).
    pub fn step_us(&self, tokens: usize, pos: usize, rng: &mut StdRng) -> f64 {
        if self.members.len() == 1 {
            self.node_step_us(tokens, pos)
        } else {
            self.group_step_us(&[(tokens, pos)], rng)
        }
    }

    fn node_step_us(&self, tokens: usize, pos: usize) -> f64 {
        let m = &self.members[0];
        let positions = (pos + tokens) as f64;
        let kv = self.kv_bytes_per_pos_layer * self.read_positions(positions) / (m.kv_gbps * 1e3);
        let bandwidth = m.factor * (self.fixed_us + kv);
        if tokens == 1 {
            return bandwidth;
        }
        let mean_pos = pos as f64 + (tokens as f64 + 1.0) / 2.0;
        let flops = tokens as f64 * self.flops_of(mean_pos) + self.head_flops();
        bandwidth.max(flops / (m.gflops * 1e3))
    }

    /// FLOPs of one token at mean position `mean_pos` through the stage's layers.
    fn flops_of(&self, mean_pos: f64) -> f64 {
        self.flops_layer * self.layers as f64 + 4.0 * self.q_dim * self.read_positions(mean_pos)
    }

    /// Positions the stage's layers read, summed over them, for a row that attends to `positions`: all of them,
    /// or at most its window on a sliding-window layer.
    fn read_positions(&self, positions: f64) -> f64 {
        self.windows.iter().map(|w| w.map_or(positions, |w| positions.min(w as f64))).sum()
    }

    fn head_flops(&self) -> f64 {
        if self.head {
            self.head_flops
        } else {
            0.0
        }
    }

    /// One step of a tensor-parallel group carrying `steps` (tokens, first position): one step alone, or a batch
    /// on a group that batches (each further row adds its multiply-adds on every member; the all-reduces and the
    /// broadcast carry every row).
    fn group_step_us(&self, steps: &[(usize, usize)], rng: &mut StdRng) -> f64 {
        let k = self.members.len();
        let tokens: usize = steps.iter().map(|s| s.0).sum();
        // Per layer (the mean over the stage's layers when some have a window).
        let per_layer = |positions: f64| self.read_positions(positions) / self.layers.max(1) as f64;
        let kv_read = self.kv_bytes_per_pos_layer * steps.iter().map(|&(t, p)| per_layer((p + t) as f64)).sum::<f64>();
        let prefill = steps.iter().any(|s| s.0 > 1);
        let layer_flops: f64 = steps
            .iter()
            .map(|&(t, p)| {
                t as f64 * (self.flops_layer + 4.0 * self.q_dim * per_layer(p as f64 + (t as f64 + 1.0) / 2.0))
            })
            .sum();
        let extra_rows = tokens.saturating_sub(1) as f64;
        let member_layer = |m: &Member, bytes: f64| {
            let bw = m.factor
                * (bytes * m.weight_share / (m.gbps * 1e3)
                    + kv_read * m.kv_share / (m.kv_gbps * 1e3)
                    + DISPATCHES_PER_LAYER * m.dispatch_us
                    + extra_rows * m.row_layer_us);
            if prefill {
                bw.max(layer_flops * m.weight_share / (m.gflops * 1e3))
            } else {
                bw
            }
        };
        let sync_factor = self.members.iter().map(|m| m.factor).fold(0.0, f64::max);
        let reduce_bytes = self.dim_bytes * tokens as u64 * (k as u64 - 1);
        let uniform = self.layer_bytes.windows(2).all(|w| w[0] == w[1]);
        let mut total = 0.0;
        let slowest_of = |bytes: f64| self.members.iter().map(|m| member_layer(m, bytes)).fold(0.0, f64::max);
        if uniform {
            total += self.layers as f64 * slowest_of(self.layer_bytes.first().copied().unwrap_or(0.0));
        } else {
            total += self.layer_bytes.iter().map(|&b| slowest_of(b)).sum::<f64>();
        }
        for _ in 0..2 * self.layers {
            total += self.allreduce_us(reduce_bytes, rng) + sync_factor * TP_SYNC_US;
        }
        if self.embed {
            total += self.members.iter().map(|m| m.factor * EMBED_DISPATCHES * m.dispatch_us).fold(0.0, f64::max);
        }
        if self.head {
            total += self
                .members
                .iter()
                .map(|m| {
                    let bw = m.factor
                        * (self.head_bytes / (m.head_gbps * 1e3)
                            + HEAD_DISPATCHES * m.dispatch_us
                            + extra_rows * m.row_head_us);
                    if prefill {
                        bw.max(self.head_flops / (m.gflops * 1e3))
                    } else {
                        bw
                    }
                })
                .fold(0.0, f64::max);
        }
        let input_bytes = if self.embed { 4 * tokens as u64 } else { self.act_bytes * tokens as u64 };
        total + self.broadcast_us(input_bytes, rng) + self.members[0].factor * STEP_OVERHEAD_US
    }

    /// One all-reduce: every member sends its partial to the `k - 1` others; the slowest member sets the time.
    fn allreduce_us(&self, bytes: u64, rng: &mut StdRng) -> f64 {
        self.members
            .iter()
            .map(|m| {
                net::latency(&m.link, rng)
                    + net::latency(&m.link, rng)
                    + bytes as f64 / m.link.bandwidth_mbps
                    + net::loss_delay(&m.link, bytes, rng)
            })
            .fold(0.0, f64::max)
    }

    /// The leader forwards `bytes` (the stage input) to each other member.
    fn broadcast_us(&self, bytes: u64, rng: &mut StdRng) -> f64 {
        let leader = &self.members[0].link;
        let copies = (self.members.len() - 1) as u64;
        self.members[1..]
            .iter()
            .map(|m| {
                net::latency(leader, rng)
                    + net::latency(&m.link, rng)
                    + (bytes * copies) as f64 / leader.bandwidth_mbps
                    + bytes as f64 / m.link.bandwidth_mbps
                    + net::loss_delay(leader, bytes * copies, rng)
            })
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::{LOOPBACK, PI5};
    use edge_coord::model_desc::ModelShape;
    use edge_coord::plan::{plan, TpMode};
    use edge_node::quant::GgmlType;
    use rand::SeedableRng;

    /// A decode step deep into the context: gemma3's shape (15 of 18 layers windowed at 512) reads the KV of 3
    /// layers x the context + 15 x the window, and pays the attention FLOPs of those positions only.
    #[test]
    fn sliding_window_layers_read_at_most_their_window() {
        let shape = ModelShape::GEMMA3_270M;
        let full = ModelDescription::synthetic(shape, GgmlType::Q8_0);
        let windowed =
            ModelDescription { layer_windows: (0..18).map(|l| (l % 6 != 5).then_some(512)).collect(), ..full.clone() };
        let nodes = [SimNode { id: "pi".into(), device: PI5, link: LOOPBACK, host: None }];
        let profiles: Vec<NodeProfile> = nodes.iter().map(crate::cluster::node_profile).collect();
        let req = PlanRequest { context: 2048, sequences: 1, tensor_parallel: TpMode::Off };
        let p = plan(&full, &profiles, &req).unwrap();
        let cost = |m: &ModelDescription| StageCost::new(m, &nodes, &profiles, &[0], &p.stages[0]);
        let (f, w) = (cost(&full), cost(&windowed));
        assert_eq!(w.read_positions(8000.0), 3.0 * 8000.0 + 15.0 * 512.0);
        assert_eq!(f.read_positions(8000.0), 18.0 * 8000.0);
        assert_eq!(w.read_positions(300.0), f.read_positions(300.0), "inside the window nothing changes");
        let mut rng = StdRng::seed_from_u64(1);
        let (tf, tw) = (f.step_us(1, 8000, &mut rng), w.step_us(1, 8000, &mut rng));
        let kv_saved = full.kv_bytes_per_token_per_layer as f64 * 15.0 * (8001.0 - 512.0);
        let gbps = profiles[0].gemv_gbps * 1e3;
        assert!((tf - tw - PI5.time_factor() * kv_saved / gbps).abs() < 1e-6 * tf, "{tf} vs {tw}");
    }
}
