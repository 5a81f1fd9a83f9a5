//! `edge-coord`: plans how a model is split over the cluster and drives generation jobs.
//!
//! # Layout
//! - [`model_desc`]: the planner's view of a model (per-layer bytes, KV and activation sizes, FLOPs, head and FFN
//!   shapes for tensor-parallel splits).
//! - [`cluster`]: the planner's view of the cluster (members, capabilities, measured links).
//! - [`plan`]: the planner, sans I/O: which nodes run which layers (pipeline stages, tensor-parallel groups) and
//!   the predicted token latency and throughput, under a documented cost model. Shared by `edge-coord plan`, the
//!   runtime and the simulator.
//! - [`deploy`]: putting a plan on the cluster: shipping each member its stage's tensors, wiring the pipeline.
//! - [`job`]: running sequences on a deployment, tokens streamed back, per-stage timings collected.
//! - [`serve`]: `edge-coord serve`, the OpenAI-compatible HTTP API on a long-lived deployment, and `edge-coord status`.
//!
//! The planner, shard shipping and job control arrive with the distributed-generation issue; the planner will
//! be a sans-I/O library here, shared by the CLI and the simulator.

pub mod cluster;
pub mod deploy;
pub mod job;
pub mod model_desc;
pub mod plan;
pub mod run;
pub mod serve;

pub use model_desc::ModelDescription;
