//! `edge-sim`: a discrete-event simulator of edge clusters running this project's runtime. It plans with the
//! real planner ([`edge_coord::plan::plan`]) and times every step with its cost model, then plays the runtime's
//! protocol (prefill chunks, the decode ring, FIFO stages, links with queueing, jitter and loss, tensor-parallel
//! all-reduces, failures and re-plans) event by event. Deterministic for a seed: no wall clock enters a result.
//!
//! # Layout
//! - [`profiles`]: device profiles (memory, GEMV GB/s, dispatch cost, prefill FLOPS, calibration, MTBF) and link
//!   profiles (latency, jitter, bandwidth, loss, shared medium), with their sources.
//! - [`models`]: SmolLM2-135M as the real file holds it, and synthetic Qwen2.5-0.5B, Llama-7B and Llama-70B shapes.
//! - [`cluster`]: a simulated cluster (nodes, shared hosts, the coordinator's link) and the planner's view of it.
//! - [`config`]: what one simulation runs (workload, replicas, tensor parallelism, churn, seed).
//! - [`stagecost`]: the time of one step of a stage (planner cost model at the real KV length, calibration,
//!   prefill FLOPS floor, sampled tensor-parallel communication).
//! - [`net`]: the star network with FIFO link resources, jitter, loss recovery and in-order delivery.
//! - [`engine`]: the event heap and the runtime's protocol (requests, chunks, the ring).
//! - [`host`]: nodes sharing a machine's cores (processor sharing).
//! - [`deploy`]: replicas, plans, shipping tensors; [`simulate`].
//! - [`recovery`]: node failures and returns, re-plans, replays.
//! - [`stats`]: percentiles, the result and its tables.
//! - [`validate`]: [`predict_run`] (one `edge-coord run`, simulated) and the measured numbers it is checked on.
//! - [`bench`]: timing the planner for 1 to 1,024 nodes.
//! - [`plot`], [`sweep`]: PNG plots (plotters, embedded font) and the sweeps behind `simulations/README.md`.

pub mod bench;
pub mod cluster;
pub mod config;
pub mod deploy;
pub mod engine;
pub mod host;
pub mod models;
pub mod net;
pub mod plot;
pub mod profiles;
pub mod recovery;
pub mod stagecost;
pub mod stats;
pub mod sweep;
pub mod validate;

pub use cluster::{Cluster, Host, SimNode};
pub use config::{Arrivals, Churn, Replicas, SimConfig, Workload};
pub use deploy::simulate;
pub use stats::SimResult;
pub use validate::predict_run;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("no plan: {0}")]
    Plan(String),
    #[error("plot: {0}")]
    Plot(String),
}
