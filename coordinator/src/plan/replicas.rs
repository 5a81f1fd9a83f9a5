//! Replicas: independent copies of the model on disjoint groups of nodes, each a plan of its own, with requests
//! going to whichever will finish them soonest. One plan stops scaling at a handful of nodes (at most `n_layers`
//! stages, each busy per token); replicas use the rest (simulator finding 1).
//!
//! **Which nodes.** For `k` replicas the nodes are taken fastest first (GEMV bandwidth, then memory, then index).
//! Replica `i` is planned by [`plan`] on the fastest `ceil(left / (k - i))` nodes still free, an equal share of
//! what is left; the nodes its plan leaves unused go back to the free ones, so the next replica may take them.
//! Nodes no plan uses are dealt out as spares, in turn, for re-plans after a lost node. So the first replica is
//! the fastest (a lone request goes there). Replica `i`'s pool is about `1 / (k - i)` of the nodes, so `k`
//! replicas cost about `H_k = 1 + 1/2 + ... + 1/k` plans on every node (less where nodes of one profile form a
//! class), and `Auto` tries up to ~26 counts.
//!
//! **How many** (`ReplicaMode::Auto`). `req.sequences` is the expected load: `k` replicas share it, each planned
//! for `sequences / k` sequences (the first `sequences % k`, the fastest, for one more). Among `k = 1..=16` and the powers of two above, up to the nodes and the
//! sequences, the count whose replicas all have a plan and predict the most throughput together wins, a larger
//! count only when it raises that total by more than 1% (ties: fewer replicas), and only when it hurts no
//! request's speed at that load: every replica's time per token of one of its sequences (its sequences /
//! its throughput) must be at most one plan's (`sequences / throughput`). With one sequence this is one replica.
//! When one plan cannot hold the load (a plan uses at most `n_layers` stages, so many sequences' KV caches may
//! not fit on the nodes it takes), the smallest count that fits takes its place.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{fastest_first, plan, NodeProfile, Plan, PlanError, PlanRequest};
use crate::ModelDescription;

/// Replica counts tried one by one; above this, powers of two.
const EVERY_COUNT_UP_TO: usize = 16;
/// A larger replica count must raise the predicted total throughput by more than this fraction.
const MIN_GAIN: f64 = 0.01;

/// How many replicas: as many as pay off (`auto`), or exactly `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaMode {
    Auto,
    Fixed(usize),
}

impl FromStr for ReplicaMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ReplicaMode::Auto),
            _ => match s.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(ReplicaMode::Fixed(n)),
                _ => Err(format!("replicas must be auto or a count of at least 1, not {s:?}")),
            },
        }
    }
}

impl fmt::Display for ReplicaMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaMode::Auto => f.write_str("auto"),
            ReplicaMode::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// One copy of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    /// The nodes it may use (indices into the planner's nodes, ascending): its plan's members and its spares.
    pub nodes: Vec<usize>,
    /// Its plan; member indices are into the planner's nodes.
    pub plan: Plan,
}

/// The replicas of a model over a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replicas {
    pub replicas: Vec<Replica>,
    /// The replicas' predicted throughput together (tok/s).
    pub throughput_tokens_per_s: f64,
}

impl Replicas {
    /// Most sequences a replica is planned for: `ceil(sequences / replicas)` (the first `sequences % replicas`
    /// replicas take one more than the others; each plan's prediction names its own).
    pub fn sequences_each(&self) -> usize {
        self.replicas.iter().map(|r| r.plan.prediction.sequences).max().unwrap_or(0)
    }

    /// Time per token of one sequence of the slowest replica, each running the sequences it is planned for (us).
    pub fn slowest_token_interval_us(&self) -> f64 {
        let interval = |p: &Plan| p.prediction.sequences as f64 * 1e6 / p.prediction.throughput_tokens_per_s;
        self.replicas.iter().map(|r| interval(&r.plan)).fold(0.0, f64::max)
    }
}

/// Plans `mode` replicas of `model` on `nodes` for the load `req.sequences` (see the module documentation).
pub fn plan_replicas(
    model: &ModelDescription,
    nodes: &[NodeProfile],
    req: &PlanRequest,
    mode: ReplicaMode,
) -> Result<Replicas, PlanError> {
    let n = nodes.len();
    if n == 0 {
        return Err(PlanError::NoNodes);
    }
    if req.sequences == 0 {
        return Err(PlanError::NoSequences);
    }
    let s = req.sequences;
    match mode {
        ReplicaMode::Fixed(k) if k == 0 || k > n || k > s => Err(PlanError::BadReplicas {
            replicas: k,
            reason: if k == 0 {
                "at least one is needed".into()
            } else if k > n {
                format!("the cluster has only {n} nodes")
            } else {
                format!("there are only {s} sequences to share")
            },
        }),
        ReplicaMode::Fixed(k) => build(model, nodes, req, k),
        ReplicaMode::Auto => {
            let top = n.min(s);
            let counts = (1..=top.min(EVERY_COUNT_UP_TO))
                .chain(std::iter::successors(Some(EVERY_COUNT_UP_TO * 2), |k| Some(k * 2)).take_while(|&k| k <= top));
            // The first count that fits (usually one plan) sets the speed no sequence may fall below.
            let mut best: Option<(Replicas, f64)> = None;
            let mut first_error = None;
            for k in counts {
                match build(model, nodes, req, k) {
                    Ok(r) => match &best {
                        None => {
                            let interval = r.slowest_token_interval_us();
                            best = Some((r, interval));
                        }
                        Some((b, limit)) => {
                            let gains = r.throughput_tokens_per_s > b.throughput_tokens_per_s * (1.0 + MIN_GAIN);
                            if gains && r.slowest_token_interval_us() <= limit * (1.0 + 1e-9) {
                                best = Some((r, *limit));
                            }
                        }
                    },
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match (best, first_error) {
                (Some((r, _)), _) => Ok(r),
                (None, Some(e)) => Err(e),
                (None, None) => unreachable!("at least one replica count is tried"),
            }
        }
    }
}

/// Exactly `k` replicas, or the error of the first that finds no plan.
fn build(model: &ModelDescription, nodes: &[NodeProfile], req: &PlanRequest, k: usize) -> Result<Replicas, PlanError> {
    let s = req.sequences;
    let mut free = fastest_first(model, nodes);
    let mut replicas = Vec::with_capacity(k);
    for i in 0..k {
        if free.len() < k - i {
            let reason = format!("{} nodes are left for the last {} replicas", free.len(), k - i);
            return Err(PlanError::BadReplicas { replicas: k, reason });
        }
        let share = free.len().div_ceil(k - i).min(free.len() - (k - i - 1));
        // Chosen by speed, planned in index order (one replica is exactly `plan` on every node).
        let mut pool: Vec<usize> = free[..share].to_vec();
        pool.sort_unstable();
        let profiles: Vec<NodeProfile> = pool.iter().map(|&g| nodes[g].clone()).collect();
        // The first (fastest) replicas take the sequences that do not divide evenly.
        let sub_req = PlanRequest { sequences: s / k + usize::from(i < s % k), ..*req };
        let mut p = plan(model, &profiles, &sub_req).map_err(|e| match e {
            PlanError::DoesNotFit { .. } if k > 1 => PlanError::BadReplicas {
                replicas: k,
                reason: format!("replica {} of {k} on {} of the nodes: {e}", i + 1, pool.len()),
            },
            e => e,
        })?;
        for m in p.stages.iter_mut().flat_map(|s| s.members.iter_mut()) {
            m.node = pool[m.node];
        }
        let used: Vec<usize> = p.member_nodes().collect();
        free.retain(|g| !used.contains(g));
        replicas.push(Replica { nodes: used, plan: p });
    }
    for (j, g) in free.into_iter().enumerate() {
        replicas[j % k].nodes.push(g);
    }
    for r in &mut replicas {
        r.nodes.sort_unstable();
    }
    let throughput_tokens_per_s = replicas.iter().map(|r| r.plan.prediction.throughput_tokens_per_s).sum();
    Ok(Replicas { replicas, throughput_tokens_per_s })
}
