//! Putting plans on the simulated cluster: replicas (how many, which nodes), the real planner's plan for each,
//! the stages' costs, shipping the tensors a node's cache lacks; and [`simulate`], which runs it all.

use std::collections::VecDeque;

use edge_coord::plan::{self, cost, replicas, NodeProfile, Plan, PlanRequest, Stage, StageMember};
use edge_coord::ModelDescription;

use crate::config::{Arrivals, Replicas, SimConfig};
use crate::engine::{Ev, Sim, Step};
use crate::stagecost::StageCost;
use crate::stats::{quantile, PlanSummary, SimResult};
use crate::{net, SimError};

/// Loading a stage on a node after its tensors are in the cache: rebuilding the GGUF, creating the backend and
/// warming every kernel (lavapipe compiles 30-130 ms per pipeline), plus reading the bytes from storage.
pub const STAGE_LOAD_FIXED_S: f64 = 1.0;

/// A tensor in a node's cache: a layer's (slice of) weights, the embedding or the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorKey {
    Layer { layer: u32, kv_heads: (u32, u32), ffn: (u32, u32) },
    Embed,
    Head,
}

/// A stage as it runs: its costs and its queue.
pub struct RunStage {
    pub cost: StageCost,
    pub queue: VecDeque<Step>,
    /// The steps running (several requests' when the stage batches) and when they started (us).
    pub busy: Option<(Vec<Step>, f64)>,
}

/// A plan put on the cluster.
pub struct Deployed {
    pub plan: Plan,
    /// The nodes the plan's member indices refer to.
    pub nodes: Vec<NodeProfile>,
    pub stages: Vec<RunStage>,
    /// Cluster indices of every member.
    pub members: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepState {
    Up,
    /// Waiting for failure detection, or shipping a new plan.
    Recovering,
    /// No plan fits the nodes left: its requests fail until a node comes back.
    Down,
}

/// One copy of the model over a group of nodes.
pub struct Replica {
    pub nodes: Vec<usize>,
    /// Bumped on every failure: events of an older plan are dropped.
    pub epoch: u32,
    pub state: RepState,
    pub plan: Option<Deployed>,
    /// The plan being shipped.
    pub pending: Option<Deployed>,
    /// The last plan that ran, over its nodes: a re-plan keeps its layout when it can (`plan::repair`).
    pub last: Option<(Plan, Vec<NodeProfile>)>,
    pub in_flight: Vec<u32>,
    pub queue: VecDeque<u32>,
    /// Sequence slots (the plan's `sequences`).
    pub sequences: usize,
    pub req: PlanRequest,
}

impl Replica {
    pub fn is_down(&self) -> bool {
        self.state == RepState::Down
    }

    pub fn uses(&self, node: usize) -> bool {
        [&self.plan, &self.pending].iter().any(|d| d.as_ref().is_some_and(|d| d.members.contains(&node)))
    }
}

/// An even pipeline of `k` stages over the first `k` of `nodes` (as `edge-coord run --stages k`: layers cut at
/// `i x n / k`), with the planner's prediction; `None` if a stage does not fit its node.
pub fn even_pipeline(model: &ModelDescription, nodes: &[NodeProfile], req: &PlanRequest, k: usize) -> Option<Plan> {
    let n = model.n_layers;
    if k == 0 || k > nodes.len() || k > n {
        return None;
    }
    let c = cost::CostModel::new(model, req);
    let cuts: Vec<usize> = (0..=k).map(|i| i * n / k).collect();
    let mut stages = Vec::with_capacity(k);
    for i in 0..k {
        let (a, b) = (cuts[i], cuts[i + 1]);
        let (embed, head) = (a == 0, b == n);
        let memory_bytes = c.stage_memory(a, b, embed, head);
        if memory_bytes > cost::usable_memory(nodes[i].memory_bytes) {
            return None;
        }
        let member = StageMember {
            node: i,
            kv_heads: (0, model.n_kv_heads as u32),
            ffn: (0, model.ffn_dim as u32),
            q_heads: None,
            memory_bytes,
        };
        let s =
            Stage { layer_start: a as u32, layer_end: b as u32, embed, head, members: vec![member], compute_us: 0.0 };
        stages.push(s);
    }
    let prediction = plan::predict(model, nodes, req, &stages);
    for (s, us) in stages.iter_mut().zip(&prediction.stage_us) {
        s.compute_us = *us;
    }
    Some(Plan { stages, prediction })
}

/// The plan for the nodes `global` of the cluster: the real planner, or an even pipeline of `stages` stages.
pub fn plan_nodes(
    model: &ModelDescription,
    profiles: &[NodeProfile],
    global: &[usize],
    req: &PlanRequest,
    stages: Option<usize>,
) -> Result<(Plan, Vec<NodeProfile>), String> {
    let sub: Vec<NodeProfile> = global.iter().map(|&g| profiles[g].clone()).collect();
    if sub.is_empty() {
        return Err("no nodes left".into());
    }
    let p = match stages {
        Some(k) => even_pipeline(model, &sub, req, k).ok_or_else(|| format!("no even {k}-stage pipeline fits"))?,
        None => plan::plan(model, &sub, req).map_err(|e| e.to_string())?,
    };
    Ok((p, sub))
}

/// Nodes of replica `r` of `count`: every `count`-th node (so each replica gets the cluster's mix). Forced even
/// pipelines (`cfg.stages`) are placed this way; the planner places its replicas itself.
pub fn partition(n: usize, count: usize) -> Vec<Vec<usize>> {
    let mut groups = vec![Vec::new(); count];
    for i in 0..n {
        groups[i % count].push(i);
    }
    groups
}

/// Most sequences one replica runs (`edge-coord run` allows 64).
pub const MAX_SEQUENCES: usize = 64;

/// Concurrent sequences all replicas together are planned for: see [`crate::config::Workload::sequences`].
pub fn total_sequences(cfg: &SimConfig) -> usize {
    let n = cfg.cluster.nodes.len();
    cfg.workload
        .sequences
        .unwrap_or(match cfg.workload.arrivals {
            Arrivals::Closed { users, .. } => users,
            Arrivals::Batch { count } => count,
            Arrivals::Poisson { .. } => 8 * n,
        })
        .max(1)
}

/// The request for `sequences` sequences (the context the workload needs).
pub fn plan_request(cfg: &SimConfig, sequences: usize) -> PlanRequest {
    PlanRequest {
        context: cfg.context.unwrap_or_else(|| cfg.workload.context()).min(cfg.model.context),
        sequences,
        tensor_parallel: cfg.tensor_parallel,
    }
}

/// A replica as set up: the nodes it may use, those its first plan runs on, and its request.
pub struct ReplicaSpec {
    pub nodes: Vec<usize>,
    pub first: Vec<usize>,
    pub req: PlanRequest,
}

/// The replicas. The planner's ([`replicas::plan_replicas`], the code `edge-coord plan --replicas` runs): `Auto`
/// on the whole load, `Fixed(k)` on `k` shares of at most [`MAX_SEQUENCES`]; the first plans are the planner's
/// (its nodes, its sequences). A forced even pipeline: `Fixed(k)` (`Auto`: 1) groups of [`partition`]. The load
/// is halved until the plans fit; nothing fits: one replica of every node with one sequence (it stays down).
pub fn choose_replicas(cfg: &SimConfig, profiles: &[NodeProfile]) -> Vec<ReplicaSpec> {
    let n = profiles.len();
    let auto = cfg.replicas == Replicas::Auto && cfg.stages.is_none();
    let k = match cfg.replicas {
        Replicas::Fixed(k) => k.clamp(1, n),
        Replicas::Auto => 1,
    };
    let total = total_sequences(cfg);
    let (mut load, floor) = if auto { (total, 1) } else { (total.div_ceil(k).min(MAX_SEQUENCES) * k, k) };
    loop {
        let found: Option<Vec<ReplicaSpec>> = match cfg.stages {
            None => {
                let mode = if auto { Replicas::Auto } else { Replicas::Fixed(k) };
                replicas::plan_replicas(&cfg.model, profiles, &plan_request(cfg, load), mode).ok().map(|r| {
                    r.replicas
                        .into_iter()
                        .map(|x| {
                            let mut first: Vec<usize> = x.plan.member_nodes().collect();
                            first.sort_unstable();
                            ReplicaSpec { nodes: x.nodes, first, req: plan_request(cfg, x.plan.prediction.sequences) }
                        })
                        .collect()
                })
            }
            Some(_) => {
                let req = plan_request(cfg, load / k);
                let groups = partition(n, k);
                groups
                    .iter()
                    .all(|g| plan_nodes(&cfg.model, profiles, g, &req, cfg.stages).is_ok())
                    .then(|| groups.into_iter().map(|g| ReplicaSpec { first: g.clone(), nodes: g, req }).collect())
            }
        };
        match found {
            Some(specs) => return specs,
            None if load <= floor => {
                let all: Vec<usize> = (0..n).collect();
                return vec![ReplicaSpec { first: all.clone(), nodes: all, req: plan_request(cfg, 1) }];
            }
            None => load = (load / 2).max(floor),
        }
    }
}

pub fn summary(p: &Plan) -> PlanSummary {
    let tp: Vec<usize> = p.stages.iter().filter(|s| s.is_tensor_parallel()).map(|s| s.members.len()).collect();
    PlanSummary {
        stages: p.stages.len(),
        tp_stages: tp.len(),
        tp_members: tp.iter().copied().max().unwrap_or(0),
        nodes_used: p.nodes_used(),
        sequences: p.prediction.sequences,
        predicted_tokens_per_s: p.prediction.tokens_per_s,
        predicted_throughput: p.prediction.throughput_tokens_per_s,
        token_latency_ms: p.prediction.token_latency_us / 1e3,
    }
}

impl Sim<'_> {
    /// A plan for replica `r` on its nodes that are up, with its stages' costs.
    pub fn plan_replica(&self, r: usize) -> Result<Deployed, String> {
        let global: Vec<usize> = self.replicas[r].nodes.iter().copied().filter(|&g| self.up[g]).collect();
        self.plan_replica_on(r, global)
    }

    /// A plan for replica `r` on the nodes `global`, with its stages' costs.
    fn plan_replica_on(&self, r: usize, global: Vec<usize>) -> Result<Deployed, String> {
        let rep = &self.replicas[r];
        let (p, sub) = plan_nodes(&self.cfg.model, &self.profiles, &global, &rep.req, self.cfg.stages)?;
        let last = rep.last.as_ref().map(|(p, n)| (p, n.as_slice()));
        let (p, _) = plan::repair::keep_or_fresh(&self.cfg.model, &sub, &rep.req, p, last);
        let nodes = &self.cfg.cluster.nodes;
        let stages = p
            .stages
            .iter()
            .map(|s| RunStage {
                cost: StageCost::new(&self.cfg.model, nodes, &sub, &global, s),
                queue: VecDeque::new(),
                busy: None,
            })
            .collect();
        let members = p.member_nodes().map(|i| global[i]).collect();
        Ok(Deployed { plan: p, nodes: sub, stages, members })
    }

    /// Puts every tensor of `d` in its members' caches; returns the time (us) to ship what they lacked from the
    /// coordinator (all members at once over the coordinator's link) and load the stages.
    pub fn ship(&mut self, d: &Deployed, charge: bool) -> f64 {
        let m = &self.cfg.model;
        let coord = self.cfg.cluster.coordinator;
        let (mut total, mut slowest, mut load) = (0u64, 0.0f64, 0.0f64);
        for (stage, run) in d.plan.stages.iter().zip(&d.stages) {
            let shares: Vec<f64> = (0..stage.members.len()).map(|i| run.cost.weight_share(i)).collect();
            for (i, (mem, node)) in stage.members.iter().zip(run.cost.nodes()).enumerate() {
                let mut keys: Vec<(TensorKey, u64)> = (stage.layer_start..stage.layer_end)
                    .map(|l| {
                        let key = TensorKey::Layer { layer: l, kv_heads: mem.kv_heads, ffn: mem.ffn };
                        (key, (m.layer_weight_bytes[l as usize] as f64 * shares[i]).ceil() as u64)
                    })
                    .collect();
                if stage.embed {
                    keys.push((TensorKey::Embed, m.embed_bytes));
                }
                if stage.head {
                    keys.push((TensorKey::Head, m.head_bytes));
                }
                let stage_bytes: u64 = keys.iter().map(|k| k.1).sum();
                let missing: u64 = keys.into_iter().filter(|(k, _)| self.caches[node].insert(*k)).map(|k| k.1).sum();
                let link = &self.cfg.cluster.nodes[node].link;
                if missing > 0 {
                    let bw = link.bandwidth_mbps.min(coord.bandwidth_mbps);
                    slowest = slowest.max(missing as f64 / bw + coord.latency_us + link.latency_us);
                }
                total += missing;
                let dev = &self.cfg.cluster.nodes[node].device;
                load = load.max(STAGE_LOAD_FIXED_S * 1e6 + stage_bytes as f64 / dev.storage_mbps);
            }
        }
        if !charge {
            return 0.0;
        }
        self.c.shipped_bytes += total;
        slowest.max(total as f64 / coord.bandwidth_mbps) + load
    }

    /// Replicas, their first plans, and churn.
    fn setup(&mut self) -> Vec<Option<PlanSummary>> {
        let n = self.profiles.len();
        let groups = choose_replicas(self.cfg, &self.profiles);
        let mut summaries = Vec::with_capacity(groups.len());
        for (r, ReplicaSpec { nodes, first, req }) in groups.into_iter().enumerate() {
            for &g in &nodes {
                self.replica_of[g] = r as u32;
            }
            self.replicas.push(Replica {
                nodes,
                epoch: 0,
                state: RepState::Down,
                plan: None,
                pending: None,
                last: None,
                in_flight: Vec::new(),
                queue: VecDeque::new(),
                sequences: req.sequences,
                req,
            });
            // The planner's plan: on the nodes it chose (the replica's spares join later re-plans).
            match self.plan_replica_on(r, first) {
                Ok(d) => {
                    summaries.push(Some(summary(&d.plan)));
                    let t = self.ship(&d, self.cfg.cold_start);
                    if self.cfg.cold_start {
                        self.replicas[r].state = RepState::Recovering;
                        self.replicas[r].pending = Some(d);
                        self.schedule(t, Ev::Ready { rep: r as u32, epoch: 0 });
                    } else {
                        self.replicas[r].state = RepState::Up;
                        self.replicas[r].plan = Some(d);
                    }
                }
                Err(_) => summaries.push(None),
            }
        }
        if let Some(churn) = self.cfg.churn {
            for g in 0..n {
                let mtbf = churn.mtbf_s.unwrap_or(self.cfg.cluster.nodes[g].device.mtbf_s);
                let at = net::exp_sample(&mut self.churn_rng, mtbf * 1e6);
                self.schedule(at, Ev::Fail { node: g as u32 });
            }
        }
        summaries
    }
}

/// Runs one simulation.
pub fn simulate(cfg: &SimConfig) -> Result<SimResult, SimError> {
    let mut sim = Sim::new(cfg)?;
    let plans = sim.setup();
    sim.run();
    let end = if sim.horizon.is_finite() { sim.horizon } else { sim.now.max(1.0) };
    let span = (end - cfg.warmup_s * 1e6).max(1.0);
    let c = &mut sim.c;
    let mut ttft = std::mem::take(&mut c.ttft);
    let ttft_mean = if ttft.is_empty() { f64::NAN } else { ttft.iter().sum::<f64>() / ttft.len() as f64 };
    let started: Vec<_> = sim.reqs.iter().filter(|r| r.first_token.is_some()).collect();
    let generated: u64 = started.iter().map(|r| r.delivered.saturating_sub(1) as u64).sum();
    let last = started.iter().map(|r| r.last_token).fold(0.0, f64::max);
    let latest_first = started.iter().filter_map(|r| r.first_token).fold(0.0, f64::max);
    let aggregate = if last > latest_first { generated as f64 * 1e6 / (last - latest_first) } else { 0.0 };
    let seq_tps = if c.seq_tps.is_empty() { 0.0 } else { c.seq_tps.iter().sum::<f64>() / c.seq_tps.len() as f64 };
    Ok(SimResult {
        seconds: span / 1e6,
        nodes: cfg.cluster.nodes.len(),
        replicas: sim.replicas.len(),
        plans,
        tokens: c.tokens,
        tokens_per_s: c.tokens as f64 * 1e6 / span,
        requests: c.requests,
        completed: c.completed,
        failed: c.failed,
        rejected: c.rejected,
        unfinished: c.requests - c.completed - c.failed - c.rejected,
        ttft_mean_s: ttft_mean / 1e6,
        ttft_p50_s: quantile(&mut ttft, 0.5) / 1e6,
        ttft_p95_s: quantile(&mut ttft, 0.95) / 1e6,
        token_latency_mean_ms: c.intervals.mean() / 1e3,
        token_latency_p95_ms: c.intervals.quantile(0.95) / 1e3,
        decode_tps_per_sequence: seq_tps,
        aggregate_decode_tps: aggregate,
        node_failures: c.node_failures,
        replans: c.replans,
        failed_replans: c.failed_replans,
        shipped_bytes: c.shipped_bytes,
        timeline_bin_s: cfg.bin_s,
        timeline: std::mem::take(&mut c.timeline),
        failure_times_s: c.failure_times.iter().map(|t| t / 1e6).collect(),
        order_violations: c.order_violations,
        events: c.events,
        trace: std::mem::take(&mut c.trace),
    })
}
