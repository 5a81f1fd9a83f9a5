//! What a simulation runs: the model, the cluster, the workload, how the cluster is planned (tensor parallelism,
//! replicas, a forced pipeline) and what goes wrong (churn).

use edge_coord::plan::TpMode;
use edge_coord::ModelDescription;
use serde::Serialize;

use crate::cluster::Cluster;

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Arrivals {
    /// `users` users, each sending a request, waiting for its last token, thinking for an exponential time of
    /// mean `think_s`, and sending the next (after a failed request: at least 1 s later). Users start at uniform
    /// random times within the first second, or within the first half of the warm-up if that is longer.
    Closed { users: usize, think_s: f64 },
    /// A Poisson process of `rate` requests per second.
    Poisson { rate: f64 },
    /// `count` requests at time 0 (one `edge-coord run --sequences count`).
    Batch { count: usize },
}

/// The requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Workload {
    pub arrivals: Arrivals,
    /// Mean prompt length (tokens).
    pub prompt_tokens: usize,
    /// Mean number of generated tokens.
    pub output_tokens: usize,
    /// Lengths are uniform in `mean x [1 - spread, 1 + spread]` (0: fixed).
    pub length_spread: f64,
    /// Concurrent sequences the replicas are planned for together (their KV caches), each replica taking its
    /// share (with `--replicas N`, at most 64 each: `edge-coord run` allows 64), halved until the plans fit;
    /// more requests queue. `None`: the users (closed loop), the batch, or 8 per node (open loop).
    pub sequences: Option<usize>,
}

impl Workload {
    /// Positions a sequence may need (the plan's context).
    pub fn context(&self) -> usize {
        let s = 1.0 + self.length_spread.clamp(0.0, 1.0);
        (self.prompt_tokens as f64 * s).ceil() as usize + (self.output_tokens as f64 * s).ceil() as usize
    }
}

/// How many independent copies of the model the cluster runs (requests go to the least loaded): the planner's
/// [`ReplicaMode`](edge_coord::plan::replicas::ReplicaMode), `Fixed(1)` (one plan) or `Auto`.
pub use edge_coord::plan::replicas::ReplicaMode as Replicas;

/// Nodes failing and coming back.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Churn {
    /// Mean time between failures of a node (exponential); `None`: each device profile's own `mtbf_s`.
    pub mtbf_s: Option<f64>,
    /// Mean time a failed node stays away (exponential).
    pub down_s: f64,
}

/// One simulation.
#[derive(Debug, Clone, Serialize)]
pub struct SimConfig {
    #[serde(skip)]
    pub model: ModelDescription,
    pub model_name: String,
    #[serde(skip)]
    pub cluster: Cluster,
    pub workload: Workload,
    #[serde(skip)]
    pub tensor_parallel: TpMode,
    pub replicas: Replicas,
    /// Positions each sequence may hold (the plan's context); `None`: the workload's longest request.
    pub context: Option<usize>,
    /// Force an even pipeline of this many stages over the first nodes (`edge-coord run --stages`).
    pub stages: Option<usize>,
    pub churn: Option<Churn>,
    /// Simulated time; `None`: until every request has ended (batch workloads).
    pub seconds: Option<f64>,
    pub seed: u64,
    /// Rates, first-token times and token intervals count from this time on (the start's burst excluded).
    pub warmup_s: f64,
    /// From a node's failure to the coordinator acting on it: the liveness bound of the cluster view (ping
    /// timeout 3 s + interval 1 s + 1 s; `node/src/net/event_loop.rs`).
    pub detect_s: f64,
    /// Ship every stage's tensors at time 0 (otherwise the nodes' caches already hold their first plan).
    pub cold_start: bool,
    /// Record every stage step and token (for tests).
    pub trace: bool,
    /// Width of the throughput timeline's bins (s).
    pub bin_s: f64,
}

/// The liveness bound (s): see [`SimConfig::detect_s`].
pub const DETECT_S: f64 = 5.0;

impl SimConfig {
    pub fn new(model_name: &str, model: ModelDescription, cluster: Cluster, workload: Workload) -> SimConfig {
        SimConfig {
            model,
            model_name: model_name.to_string(),
            cluster,
            workload,
            tensor_parallel: TpMode::Auto,
            replicas: Replicas::Fixed(1),
            context: None,
            stages: None,
            churn: None,
            seconds: Some(600.0),
            seed: 1,
            warmup_s: 0.0,
            detect_s: DETECT_S,
            cold_start: false,
            trace: false,
            bin_s: 5.0,
        }
    }
}
