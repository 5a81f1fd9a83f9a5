//! How long the real planner takes for 1 to 1,024 nodes (issue #5: under 1 s for 1,024 nodes), for a
//! 30-layer and an 80-layer model, on a homogeneous cluster (one node class: the DP considers at most
//! `n_layers` nodes of it) and on a mixed one where every node differs a little (1,024 classes: the worst case).
//! Wall-clock time is measured here, and only here.

use std::fmt::Write;
use std::time::Instant;

use edge_coord::plan::{plan, NodeProfile, PlanRequest, TpMode};
use edge_coord::ModelDescription;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{node_profile, Cluster};
use crate::profiles::{DEVICES, ETHERNET, FIVE_G, PI5, WIFI};

pub const SIZES: [usize; 5] = [1, 16, 64, 256, 1024];
/// Target for 1,024 nodes (ms).
pub const TARGET_MS: f64 = 1000.0;

#[derive(Debug, Clone)]
pub struct BenchRow {
    pub model: &'static str,
    pub layers: usize,
    pub cluster: &'static str,
    pub nodes: usize,
    pub sequences: usize,
    /// Fastest of the repetitions (ms).
    pub ms: f64,
    /// The plan found: stages, nodes used (`None`: the model does not fit).
    pub plan: Option<(usize, usize)>,
}

/// Homogeneous Raspberry Pi 5s on Wi-Fi.
pub fn homogeneous(n: usize) -> Vec<NodeProfile> {
    Cluster::homogeneous(n, &PI5, WIFI).node_profiles()
}

/// Every device kind and three links, each node's GEMV speed, memory and latency perturbed by up to +-10%
/// (a self-benchmark never measures the same number twice), so no two nodes are alike.
pub fn mixed(n: usize, seed: u64) -> Vec<NodeProfile> {
    let mut rng = StdRng::seed_from_u64(seed);
    // The assumed devices (not the two measured on this machine).
    let devices: Vec<_> = DEVICES.iter().filter(|d| !d.source.starts_with("measured")).map(|d| (*d, 1.0)).collect();
    let links = [WIFI, ETHERNET, FIVE_G];
    let c = Cluster::mixed(n, &devices, WIFI);
    c.nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut node = node.clone();
            node.link = links[i % links.len()];
            let mut p = node_profile(&node);
            let mut jiggle = || 1.0 + 0.2 * (rng.random::<f64>() - 0.5);
            p.gemv_gbps *= jiggle();
            p.memory_bytes = (p.memory_bytes as f64 * jiggle()) as u64;
            p.link.latency_us *= jiggle();
            p
        })
        .collect()
}

/// Times `plan` (fastest of `reps`).
pub fn time_plan(
    model: &ModelDescription,
    nodes: &[NodeProfile],
    req: &PlanRequest,
    reps: usize,
) -> (f64, Option<(usize, usize)>) {
    let mut best = f64::INFINITY;
    let mut found = None;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let p = plan(model, nodes, req);
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
        found = p.ok().map(|p| (p.stages.len(), p.nodes_used()));
    }
    (best, found)
}

/// Every size, both clusters, both models, one and eight sequences (`TpMode::Auto`).
pub fn run(reps: usize) -> Vec<BenchRow> {
    let models =
        [("smollm2", crate::models::smollm2()), ("llama-70b-q4", crate::models::model("llama-70b-q4").unwrap())];
    let mut rows = Vec::new();
    for (name, model) in &models {
        for cluster in ["homogeneous", "mixed"] {
            for &n in &SIZES {
                let nodes = if cluster == "homogeneous" { homogeneous(n) } else { mixed(n, 7) };
                for sequences in [1, 8] {
                    let req = PlanRequest { context: 1024, sequences, tensor_parallel: TpMode::Auto };
                    let (ms, plan) = time_plan(model, &nodes, &req, reps);
                    rows.push(BenchRow { model: name, layers: model.n_layers, cluster, nodes: n, sequences, ms, plan });
                }
            }
        }
    }
    rows
}

/// The rows as a table, and the verdict on the 1,024-node target.
pub fn table(rows: &[BenchRow]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<13} {:>6} {:<12} {:>6} {:>5} {:>10} {:>7} {:>6}",
        "MODEL", "LAYERS", "CLUSTER", "NODES", "SEQS", "PLAN MS", "STAGES", "USED"
    );
    for r in rows {
        let (stages, used) = r.plan.map_or(("-".into(), "no fit".into()), |(s, u)| (s.to_string(), u.to_string()));
        let _ = writeln!(
            o,
            "{:<13} {:>6} {:<12} {:>6} {:>5} {:>10.2} {:>7} {:>6}",
            r.model, r.layers, r.cluster, r.nodes, r.sequences, r.ms, stages, used
        );
    }
    let worst = rows.iter().filter(|r| r.nodes == 1024).map(|r| r.ms).fold(0.0, f64::max);
    let _ = writeln!(
        o,
        "slowest 1,024-node plan: {worst:.1} ms (target < 1 s: {})",
        if worst < TARGET_MS { "met" } else { "missed" }
    );
    o
}
