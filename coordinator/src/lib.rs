//! `edge-coord`: plans how a model is split over the cluster and drives generation jobs.
//!
//! # Layout
//! - [`model_desc`]: the planner's view of a model (per-layer bytes, KV and activation sizes, FLOPs).
//! - [`cluster`]: the planner's view of the cluster (members, capabilities, measured links).
//!
//! The planner, shard shipping and job control arrive with the distributed-generation issue; the planner will
//! be a sans-I/O library here, shared by the CLI and the simulator.

pub mod cluster;
pub mod model_desc;

pub use model_desc::ModelDescription;
