//! What the status page, `/api/status` and `/metrics` read: the [`Board`] the scheduler keeps up to date and the
//! HTTP handlers read under its lock, with the per-node token rate; and how a plan and a member are shown there.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::metrics::Metrics;
use super::status::{JobStatus, ModelInfo, NodeStatus, PlanStatus, ReplicaStatus, StageMemberStatus, StageStatus};
use crate::run::Planned;

/// Window of the per-node token rate.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// What the status page needs that only the scheduler knows; shared with the HTTP handlers.
pub struct Board {
    pub started: Instant,
    pub model: ModelInfo,
    /// Each replica of the model (its plan, load, and why it refuses requests while no plan of it fits), by
    /// replica index.
    pub replicas: Vec<ReplicaStatus>,
    /// Every member seen when planning, by peer id (the live fields are filled in when the status is read).
    pub members: Vec<NodeStatus>,
    pub jobs: VecDeque<JobStatus>,
    pub requests: u64,
    pub completion_tokens: u64,
    /// Per node: (second, tokens its stage processed in that second), the last [`RATE_WINDOW`].
    tokens: HashMap<String, VecDeque<(Instant, u64)>>,
    /// Counters and histograms of `/metrics`.
    pub metrics: Metrics,
}

impl Board {
    pub fn new(model: ModelInfo) -> Board {
        Board {
            started: Instant::now(),
            model,
            replicas: Vec::new(),
            members: Vec::new(),
            jobs: VecDeque::new(),
            requests: 0,
            completion_tokens: 0,
            tokens: HashMap::new(),
            metrics: Metrics::default(),
        }
    }

    /// Updates a job's record; its move into a final state is counted in the metrics.
    pub(super) fn job(&mut self, id: &str, f: impl FnOnce(&mut JobStatus)) {
        if let Some(j) = self.jobs.iter_mut().find(|j| j.id == id) {
            let from = j.state;
            f(j);
            self.metrics.transition(from, j.state);
        }
    }

    /// Replica `i`'s slot (created when it is first used).
    pub(super) fn replica(&mut self, i: usize) -> &mut ReplicaStatus {
        if self.replicas.len() <= i {
            self.replicas.resize_with(i + 1, ReplicaStatus::default);
        }
        &mut self.replicas[i]
    }

    /// The first replica's plan that runs now.
    pub fn plan(&self) -> Option<&PlanStatus> {
        self.replicas.iter().find_map(|r| r.plan.as_ref())
    }

    /// Sequences running on every replica.
    pub fn running(&self) -> usize {
        self.replicas.iter().map(|r| r.running).sum()
    }

    /// Requests waiting on every replica.
    pub fn queued(&self) -> usize {
        self.replicas.iter().map(|r| r.queued).sum()
    }

    /// Why new requests are refused (503): when every replica is unavailable, the first one's reason.
    pub fn unavailable(&self) -> Option<String> {
        let mut reasons = self.replicas.iter().map(|r| r.unavailable.as_ref());
        let first = reasons.next()??;
        reasons.all(|r| r.is_some()).then(|| first.clone())
    }

    /// `n` tokens went through every stage of replica `replica`'s plan.
    pub(super) fn count(&mut self, replica: usize, n: u64) {
        let now = Instant::now();
        let nodes: Vec<String> = self
            .replicas
            .get(replica)
            .and_then(|r| r.plan.as_ref())
            .iter()
            .flat_map(|p| &p.stages)
            .flat_map(|s| &s.members)
            .map(|m| m.node.clone())
            .collect();
        for node in nodes {
            let q = self.tokens.entry(node).or_default();
            match q.back_mut() {
                Some((t, c)) if now.duration_since(*t) < Duration::from_secs(1) => *c += n,
                _ => q.push_back((now, n)),
            }
            while q.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
                q.pop_front();
            }
        }
    }

    /// Tokens per second `node` processed over the last [`RATE_WINDOW`].
    pub fn rate(&self, node: &str) -> f64 {
        let now = Instant::now();
        let sum: u64 = self
            .tokens
            .get(node)
            .map_or(0, |q| q.iter().filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW).map(|(_, c)| c).sum());
        let window = RATE_WINDOW.as_secs_f64().min(self.started.elapsed().as_secs_f64()).max(1.0);
        sum as f64 / window
    }

    /// The replica whose plan `node` runs a stage of.
    pub fn replica_of(&self, node: &str) -> Option<usize> {
        self.replicas
            .iter()
            .position(|r| r.plan.iter().flat_map(|p| &p.stages).flat_map(|s| &s.members).any(|m| m.node == node))
    }
}

/// A plan as the status shows it.
pub fn plan_status(p: &Planned) -> PlanStatus {
    let stages = p
        .plan
        .stages
        .iter()
        .zip(&p.deployment.stages)
        .map(|(s, a)| StageStatus {
            layers: (s.layer_start, s.layer_end),
            embed: s.embed,
            head: s.head,
            members: a
                .members
                .iter()
                .map(|(peer, slice)| StageMemberStatus {
                    node: peer.to_string(),
                    kv_heads: slice.map(|l| l.kv_heads),
                    q_heads: slice.and_then(|l| l.q_heads),
                    ffn: slice.map(|l| l.ffn),
                })
                .collect(),
            predicted_us: s.compute_us,
        })
        .collect();
    PlanStatus {
        id: edge_node::stage::store::hex(&p.deployment.plan),
        stages,
        predicted_tokens_per_s: p.plan.prediction.throughput_tokens_per_s,
        sequences: p.plan.prediction.sequences,
    }
}

/// A member as the status shows it (the live fields, `alive` and `rtt_ms`, are refreshed when it is read).
pub fn member_status(m: &crate::cluster::Member) -> Option<NodeStatus> {
    let c = m.peer.capabilities.as_ref()?;
    let id = m.peer.peer_id.clone();
    Some(NodeStatus {
        name: id[id.len().saturating_sub(6)..].to_string(),
        id,
        adapter: c.adapter.clone(),
        backend: c.backend.clone(),
        memory_bytes: c.memory_bytes,
        gemv_gbps: c.gemv_gbps as f64,
        row_gmacs: c.row_gmacs as f64,
        rtt_ms: m.peer.rtt_us.map(|r| r as f64 / 1e3),
        bandwidth_mbps: m.bandwidth_mbps,
        alive: true,
        active_sequences: 0,
        tokens_per_s: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_rate_counts_the_plan_nodes_over_the_window() {
        let info = ModelInfo { id: "m".into(), arch: "llama".into(), layers: 1, context: 8 };
        let mut b = Board::new(info);
        let member = |node: &str| StageMemberStatus { node: node.into(), kv_heads: None, q_heads: None, ffn: None };
        let stage = |node: &str| StageStatus {
            layers: (0, 1),
            embed: true,
            head: true,
            members: vec![member(node)],
            predicted_us: 1.0,
        };
        let plan = |nodes: [&str; 2]| PlanStatus {
            id: "p".into(),
            stages: nodes.iter().map(|n| stage(n)).collect(),
            predicted_tokens_per_s: 1.0,
            sequences: 1,
        };
        b.replica(0).plan = Some(plan(["x", "y"]));
        b.replica(1).plan = Some(plan(["v", "w"]));
        b.count(0, 5);
        b.count(0, 5);
        b.count(1, 3);
        assert_eq!(
            [b.replica_of("x"), b.replica_of("y"), b.replica_of("w"), b.replica_of("z")],
            [Some(0), Some(0), Some(1), None]
        );
        // Uptime under a second counts as one second.
        assert_eq!(b.rate("x"), 10.0);
        assert_eq!(b.rate("v"), 3.0);
        assert_eq!(b.rate("z"), 0.0);
    }

    #[test]
    fn the_cluster_is_unavailable_only_when_every_replica_is() {
        let info = ModelInfo { id: "m".into(), arch: "llama".into(), layers: 1, context: 8 };
        let mut b = Board::new(info);
        assert_eq!(b.unavailable(), None);
        b.replica(0).unavailable = Some("a".into());
        b.replica(1);
        assert_eq!(b.unavailable(), None);
        b.replica(1).unavailable = Some("b".into());
        assert_eq!(b.unavailable().as_deref(), Some("a"));
    }
}
